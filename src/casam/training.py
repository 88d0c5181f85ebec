"""Learning a task: its adapter through the frozen decoder, VAE router, threshold.

The adapter is an Alignment Layer (``LearnSettings.adapter`` "alignment") or decoder adapters
("decoder"): :mod:`casam.task_adapter`; both train in :func:`train_alignment`. The default,
"auto", trains the Alignment Layer and, where it gains under ``LearnSettings.auto_gain`` on the
held-out slices, decoder adapters too (Progress stage "second"), keeping the better one.

``iter_learn_task`` is a generator: it yields ``Progress`` between steps and returns the saved
``TaskInfo``. Closing it (or raising out of the loop) between two yields cancels the training
and leaves the library untouched: the task is only written, atomically, at the very end.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from casam.alignment import AlignmentLayer
from casam.config import LearnSettings
from casam.errors import InputError
from casam.library import LoadedTask, TaskInfo, TaskLibrary, new_task_info, validate_name
from casam.metrics import boundary_iou, iou
from casam.predictor import Predictor
from casam.preprocess import mask_box
from casam.progress import Progress
from casam.sam import Backbone
from casam.samples import Sample, collect_samples, split_holdout
from casam.task_adapter import TaskAdapter, adapter_of, train_adapter, with_strength
from casam.task_router import FittedRouter, router_stage
from casam.task_tensors import router_state

T = TypeVar("T")


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + binary cross-entropy on mask logits (B, 256, 256)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + dice.mean()


def jitter_boxes(
    boxes: torch.Tensor, amount: float, size: int, gen: torch.Generator
) -> torch.Tensor:
    """Move each side by up to ``amount`` x the box's width/height, staying inside the input."""
    if amount <= 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = (torch.rand(boxes.shape, generator=gen) * 2 - 1) * amount * wh
    out = (boxes + noise).clamp(0, size)
    out[:, 2:] = torch.maximum(out[:, 2:], out[:, :2] + 1)
    return out


def bf16_supported() -> bool:
    """Native bfloat16 matrix units on this CPU (AMX or AVX512-BF16) via oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(s: LearnSettings, backbone: Backbone) -> bool:
    return (
        bool(s.bf16 if s.bf16 is not None else bf16_supported()) and backbone.device.type == "cpu"
    )


def _point_logits(
    backbone: Backbone, za: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor, gen, decoder
) -> torch.Tensor:
    """Logits of a batch prompted with its (jittered) boxes and 1-3 random clicks: a click in
    the product always comes with its object's box (``Predictor.sam_prompts``,
    ``ClickSession(mode="points")``). Clicks without the box cost box-only quality
    (docs/benchmark-interactive.md, "Training with point prompts")."""
    from casam.prompts import sample_points

    pts, lab = sample_points(targets, boxes.cpu(), backbone.input_size, gen)
    logits, _ = backbone.decode(za, boxes, pts, lab, decoder=decoder)
    return logits


def _batch_loss(
    backbone: Backbone, za: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor,
    s: LearnSettings, gen: torch.Generator, decoder,
) -> torch.Tensor:  # fmt: skip
    """The loss of one training batch (its aligned embeddings ``za``, jittered ``boxes``)."""
    if s.point_share > 0 and float(torch.rand(1, generator=gen)) < s.point_share:
        logits = _point_logits(backbone, za, boxes, targets, gen, decoder)
    else:
        logits, _ = backbone.decode(za, boxes, decoder=decoder)
    return dice_bce(logits[:, 0], targets.to(backbone.device))


def train_alignment(
    backbone: Backbone,
    z: torch.Tensor,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    settings: LearnSettings,
    layer: AlignmentLayer | None = None,
    where: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    decoder: torch.nn.Module | None = None,
) -> Generator[Progress, None, AlignmentLayer]:
    """Train (or continue) an Alignment Layer through the frozen decoder.

    ``layer`` may be any module applied to the embeddings, e.g. decoder adapters (the identity
    on ``z``) with ``decoder``, the adapted mask decoder they act in (``casam.task_adapter``).

    ``z``: (M, 256, 64, 64) embeddings; ``boxes``: (N, 4) boxes in the backbone's input frame;
    ``targets``: (N, 256, 256) low-res masks; ``where``: (N,) index of each sample's embedding
    in ``z`` (default: sample i uses z[i]). Yields one ``Progress("align")`` per optimiser step
    and returns the layer in eval mode, frozen.
    """
    s = settings
    gen = gen if gen is not None else torch.Generator().manual_seed(s.seed)
    where = where if where is not None else torch.arange(z.shape[0])
    if layer is None:
        layer = AlignmentLayer(s.blocks)
        layer.set_scale(z)
    # channels-last: oneDNN's convolutions (the layer's, the decoder's upscaling) run faster
    # this way on CPU (learn_s_20's training stage 28.5 -> 24.7 s on the Zen 5); the layer goes
    # back to the default layout at the end (what safetensors stores)
    cl = torch.channels_last
    layer = layer.to(backbone.device, memory_format=cl).train().requires_grad_(True)
    opt = torch.optim.Adam(layer.parameters(), lr=s.lr)
    n = boxes.shape[0]
    per_epoch = math.ceil(n / s.batch_size)
    total = per_epoch * s.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, total) / max(total, 1)))
    )
    bf16 = use_bf16(s, backbone)
    step = 0
    for epoch in range(1, s.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = perm[b * s.batch_size : (b + 1) * s.batch_size]
            bx = jitter_boxes(boxes[idx], s.box_jitter, backbone.input_size, gen).to(
                backbone.device
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                za = layer(z[where[idx]].to(backbone.device).contiguous(memory_format=cl))
                loss = _batch_loss(backbone, za, bx, targets[idx], s, gen, decoder)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            yield Progress("align", step, total, epoch, loss.item())
    layer = layer.to(memory_format=torch.contiguous_format)
    return layer.eval().requires_grad_(False)


def _resolve(
    name: str,
    library: TaskLibrary | str | None,
    predictor: Predictor,
    s: LearnSettings,
    overwrite: bool,
    extend: bool,
) -> tuple[TaskLibrary, LoadedTask | None, LearnSettings]:
    """The library to save into, the task being extended (if any) and the schedule to use."""
    lib = (
        predictor.library
        if library is None
        else (library if isinstance(library, TaskLibrary) else TaskLibrary(library))
    )
    if lib is None:
        raise InputError("no task library given: pass library=FOLDER")
    previous = None
    if extend:
        previous = lib.load(name)
        model = predictor.backbone.identity
        if previous.info.backbone != model:
            raise InputError(f"task '{name}' was made with {previous.info.backbone}, not {model}")
        s = LearnSettings.from_dict(
            {
                **previous.info.settings,
                "adapter": previous.info.adapter,  # an extended task keeps its kind
                # the schedule of this learn: epochs and copies go together
                **{
                    k: v for k, v in s.to_dict().items() if k in ("epochs", "augment", "lr", "seed")
                },
            }
        )
    elif not overwrite:
        lib.ensure_free(name)
    return lib, previous, s


#: Strengths a trained adapter is tried at on the held-out slices (``with_strength``): 0 is
#: plain SAM, 1 the adapter as trained (benchmarks/layer_selection.py).
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _evaluate(
    backbone: Backbone,
    adapter: TaskAdapter,
    emb: dict,
    hold_samples: list[Sample],
    strengths: Sequence[float] = (1.0,),
) -> Generator[Progress, None, dict[float, tuple[float, float]]]:
    """Held-out (mean IoU, mean Boundary IoU) of the adapter at each of ``strengths`` (0: plain
    SAM, always scored); one Progress per held-out object. Empty without held-out objects."""
    cands: dict[float, TaskAdapter | None] = {0.0: None}  # None: plain SAM
    for a in strengths:
        if a:  # at 1 the adapter as trained (no copy)
            cands[float(a)] = adapter if a == 1 else with_strength(adapter, a, backbone)
    scores: dict[float, list[tuple[float, float]]] = {a: [] for a in cands}
    for k, x in enumerate(hold_samples):
        e = emb[x.image]
        bt = torch.from_numpy(e.geometry.boxes_to_input(mask_box(x.mask))).to(backbone.device)
        z = e.z[None].to(backbone.device)
        with torch.no_grad():
            for a, cand in cands.items():
                out = backbone.decode(z, bt) if cand is None else cand.decode(backbone, z, bt)
                logits = out[0]
                pred = (backbone.upscale_masks(logits, e.geometry)[0] > 0).cpu().numpy()
                scores[a].append((iou(pred, x.mask), boundary_iou(pred, x.mask)))
        yield Progress("evaluate", k + 1, len(hold_samples))
    if not hold_samples:
        return {}
    return {
        a: (float(np.mean([v[0] for v in s])), float(np.mean([v[1] for v in s])))
        for a, s in scores.items()
    }


def _held_out(
    backbone: Backbone, adapter: TaskAdapter, emb: dict, hold_samples: list[Sample], s
) -> Generator[Progress, None, tuple[dict[float, tuple[float, float]], float]]:
    """(held-out (IoU, BIoU) by strength, the strength kept): every strength of ``STRENGTHS``
    tried and the best kept when ``s.choose_strength``, else the adapter as trained."""
    strengths = STRENGTHS if s.choose_strength else (1.0,)
    held = yield from _evaluate(backbone, adapter, emb, hold_samples, strengths)
    return held, (choose_strength(held) if s.choose_strength else 1.0)


def _gain(held: dict[float, tuple[float, float]], strength: float) -> float:
    """Held-out IoU gain over plain SAM at ``strength``; infinite without held-out slices
    (nothing to compare: no second adapter kind is tried)."""
    if not held:
        return math.inf
    return held[strength][0] - held[0.0][0]


def _as_stage(stage: str, steps: Generator[Progress, None, T]) -> Generator[Progress, None, T]:
    """``steps`` with each Progress renamed to ``stage`` (a second training reports apart)."""
    while True:
        try:
            pr = next(steps)
        except StopIteration as stop:
            return stop.value
        yield dataclasses.replace(pr, stage=stage)


def choose_strength(held: dict[float, tuple[float, float]]) -> float:
    """The strength with the best held-out mean IoU (ties: the stronger); 1 without held-out
    slices. Plain SAM (0) is a candidate, so the task is never below SAM on them."""
    if not held:
        return 1.0
    return max(held, key=lambda a: (held[a][0], a))


def _training_tensors(
    backbone: Backbone, emb: dict, order: list[int], samples: list[Sample]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, 256, 64, 64) embeddings of the training images (in ``order``), (N, 4) boxes in the
    input frame, (N, 256, 256) low-res targets and (N,) index of each sample's embedding."""
    slot = {i: j for j, i in enumerate(order)}
    z_all = torch.stack([emb[i].z for i in order])
    targets = torch.stack([backbone.lowres_target(x.mask, emb[x.image].geometry) for x in samples])
    boxes = torch.from_numpy(
        np.stack([emb[x.image].geometry.boxes_to_input(mask_box(x.mask))[0] for x in samples])
    )
    return z_all, boxes, targets, torch.tensor([slot[x.image] for x in samples])


def _task_info(
    name: str,
    backbone: Backbone,
    s: LearnSettings,
    adapter: TaskAdapter,
    router: FittedRouter,
    counts: tuple[int, int, int],
    previous: LoadedTask | None,
    held: dict[float, tuple[float, float]],
    strength: float,
    t0: float,
    kinds: dict[str, float] | None = None,
) -> TaskInfo:
    """The metadata of the learned task; ``counts``: training images, objects, held-out images;
    ``held``: held-out (IoU, BIoU) by strength (0: plain SAM); ``strength``: the one kept;
    ``kinds``: each adapter kind's held-out IoU when "auto" trained both (else empty)."""
    n_images, n_objects, n_holdout = counts
    sam, task = held.get(0.0, (None, None)), held.get(strength, (None, None))
    means = {"iou_sam": sam[0], "iou_task": task[0], "biou_sam": sam[1], "biou_task": task[1]}
    return new_task_info(
        name,
        backbone=backbone.identity,
        threshold=router.threshold,
        knn_threshold=router.knn_threshold,
        blocks=adapter.blocks,
        adapter=adapter.kind,
        n_images=n_images + (previous.info.n_images if previous else 0),
        n_objects=n_objects + (previous.info.n_objects if previous else 0),
        n_holdout=n_holdout,
        settings={
            **s.to_dict(),
            "bf16": use_bf16(s, backbone),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "strength": strength,
            "strength_iou": {f"{a:g}": round(v[0], 6) for a, v in held.items()},
            **({"kind_iou": {k: round(v, 6) for k, v in kinds.items()}} if kinds else {}),
        },
        **means,
    )


def _checked_samples(
    images, masks, label, image_names, s: LearnSettings, extend: bool, n_train: int | None = None
):
    """(used image indices, samples, train and held-out positions in ``used``), or InputError.
    ``n_train``: images from that index on are the caller's held-out images (no split)."""
    used, samples = collect_samples(images, masks, label, image_names)
    if n_train is not None:
        train_img = [k for k, i in enumerate(used) if i < n_train]
        hold_img = [k for k, i in enumerate(used) if i >= n_train]
    if not used or (n_train is not None and not train_img):
        raise InputError(
            "no image has an annotated object (every mask is empty); annotate some first"
        )
    if n_train is None:
        train_img, hold_img = split_holdout(len(used), s)
    if len(train_img) < s.min_images and not extend:
        raise InputError(
            f"only {len(used)} annotated image(s); a task needs at least {s.min_images} for its "
            f"{s.folds}-fold threshold calibration — annotate more slices"
        )
    return used, samples, train_img, hold_img


def _split(used, samples, train_img, hold_img) -> tuple[list[int], list[Sample], list[Sample]]:
    """(sorted training image indices, training samples, held-out samples)."""
    train_set, hold_set = {used[k] for k in train_img}, {used[k] for k in hold_img}
    train = [x for x in samples if x.image in train_set]
    return sorted(train_set), train, [x for x in samples if x.image in hold_set]


def _plan(predictor, images, used, samples, train_img, hold_img, s: LearnSettings) -> Progress:
    from casam.estimate import estimate_learn

    _, train, hold = _split(used, samples, train_img, hold_img)
    # augmented copies: ``augment`` more encoder calls per training image, and about as many
    # more training objects (an object moved out of its copy is dropped)
    n_images = len(used) + s.augment * len(train_img)
    n_train = len(train) * (1 + s.augment)
    est = estimate_learn(
        predictor, images[used[0]], n_images, n_train, len(train_img), len(hold), s
    )
    return Progress("plan", 1, 1, message=str(est), estimate=est)


def _embed_all(predictor: Predictor, images, used: list[int]) -> Generator[Progress, None, dict]:
    """Embeddings of the used images (cached: a revisited image costs no encoder call)."""
    emb = {}
    for k, (j, e) in enumerate(predictor.iter_embed([images[i] for i in used])):
        emb[used[j]] = e
        yield Progress("embed", k + 1, len(used), message=f"image {k + 1}/{len(used)}")
    return emb


def _augmented(
    images, order: list[int], train_samples: list[Sample], s: LearnSettings
) -> tuple[list[np.ndarray], list[Sample]]:
    """``s.augment`` augmented copies of each training image (``casam.augment``), numbered
    ``len(images)`` on, and their samples: each object's mask moved with its copy (an object
    moved out of the copy is dropped, and so is a copy left without objects). Deterministic:
    copy c of the k-th training image draws from ``copy_rng(s.seed, k, c)``. A copy is float32
    (windowed again by ``casam.preprocess``, as any non-``uint8`` slice, e.g. CT in HU), except
    the copy of a ``uint8`` image: ``uint8`` too, so it is taken as is (``/255``) like its
    image instead of being stretched to its percentiles."""
    from casam.augment import augment_masks, copy_rng

    if s.augment <= 0:
        return [], []
    by_image: dict[int, list[np.ndarray]] = {}
    for x in train_samples:
        by_image.setdefault(x.image, []).append(x.mask)
    extra, extra_samples = [], []
    for k, i in enumerate(order):
        for c in range(s.augment):
            img, moved = augment_masks(images[i], by_image.get(i, []), copy_rng(s.seed, k, c))
            if np.asarray(images[i]).dtype == np.uint8:  # embedded as /255, as the image is,
                img = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)  # not re-windowed
            moved = [m for m in moved if m.any()]
            if moved:
                j = len(images) + len(extra)
                extra.append(img)
                extra_samples.extend(Sample(j, m) for m in moved)
    return extra, extra_samples


def iter_learn_task(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    name: str,
    library: TaskLibrary | str | None = None,
    predictor: Predictor | None = None,
    settings: LearnSettings | None = None,
    overwrite: bool = False,
    extend: bool = False,
    label: int | None = None,
    image_names: Sequence[str] | None = None,
    estimate: bool = False,
    holdout: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
) -> Generator[Progress, None, TaskInfo]:
    """Learn (or, with ``extend``, continue) a task from images and their label masks.

    ``holdout``: (images, masks) held out from training, on which the held-out IoU is measured
    and the strength chosen (``LearnSettings.choose_strength``), instead of the settings'
    ``holdout`` share of ``images``.

    ``estimate``: first time the pieces on this machine (a few seconds) and yield
    ``Progress("plan", 1, 1, message=...)`` whose ``estimate`` is a
    :class:`casam.estimate.LearnEstimate`, before any long work.
    """
    s = settings or LearnSettings()
    name = validate_name(name)
    if predictor is None:
        predictor = Predictor(library=library)
    lib, previous, s = _resolve(name, library, predictor, s, overwrite, extend)
    backbone = predictor.backbone

    n_train = None
    if holdout is not None:
        n_train = len(images)
        images, masks = [*images, *holdout[0]], [*masks, *holdout[1]]
        if image_names is not None:
            image_names = [*image_names, *(f"held-out image {i}" for i in range(len(holdout[0])))]
    used, samples, train_img, hold_img = _checked_samples(
        images, masks, label, image_names, s, extend, n_train
    )
    t0 = time.perf_counter()
    if estimate:
        yield _plan(predictor, images, used, samples, train_img, hold_img, s)
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)

    order, train_samples, hold_samples = _split(used, samples, train_img, hold_img)
    # the adapter also trains on augmented copies of the training images (never held-out ones;
    # the router sees the real images only); embedded in the same stage, counted with them
    extra, extra_samples = _augmented(images, order, train_samples, s)
    all_images = [*images, *extra]
    extra_idx = list(range(len(images), len(all_images)))
    emb = yield from _embed_all(predictor, all_images, [*used, *extra_idx])

    z_all, boxes, targets, where = _training_tensors(
        backbone, emb, [*order, *extra_idx], [*train_samples, *extra_samples]
    )

    # the adapter (of the settings' kind, an extended task's own; "auto" starts with the
    # Alignment Layer), through the frozen decoder; then the VAE router and its threshold
    prev = adapter_of(previous, backbone) if previous else None
    first = dataclasses.replace(s, adapter="alignment") if s.adapter == "auto" else s
    adapter = yield from train_adapter(backbone, z_all, boxes, targets, first, prev, where, gen)

    router = yield from router_stage(emb, order, previous, s)

    # held-out IoU of plain SAM vs the task (at each strength when the settings choose one:
    # the best is kept, plain SAM being a candidate)
    held, strength = yield from _held_out(backbone, adapter, emb, hold_samples, s)
    kinds = {}
    if s.adapter == "auto" and prev is None and _gain(held, strength) < s.auto_gain:
        # "auto": the Alignment Layer gained little on the held-out slices; decoder adapters
        # are trained on the same samples, and the better of the two kinds is kept
        kinds[adapter.kind] = held[strength][0]
        second = dataclasses.replace(s, adapter="decoder")
        steps = train_adapter(backbone, z_all, boxes, targets, second, None, where, gen)
        other = yield from _as_stage("second", steps)
        held2, strength2 = yield from _held_out(backbone, other, emb, hold_samples, s)
        kinds[other.kind] = held2[strength2][0]
        if held2[strength2][0] > held[strength][0]:
            adapter, held, strength = other, held2, strength2
    if strength != 1.0:
        adapter = with_strength(adapter, strength, backbone)
    # then save, atomically
    yield Progress("save", 0, 1)
    counts = (len(train_img), len(train_samples), len(hold_img))
    info = _task_info(
        name, backbone, s, adapter, router, counts, previous, held, strength, t0, kinds
    )
    weights = adapter.state(), router_state(router.vae, router.views)
    saved = lib.save(info, *weights, overwrite=overwrite or extend)
    if predictor.library is not None and predictor.library.root == lib.root:
        predictor.reload_library()
    return saved


def learn_task(*args, callback: Callable[[Progress], None] | None = None, **kwargs) -> TaskInfo:
    """``iter_learn_task`` run to the end; ``callback`` sees every Progress."""
    from casam.progress import drive

    return drive(iter_learn_task(*args, **kwargs), callback)
