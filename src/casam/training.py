"""Learning a task: Alignment Layer through the frozen decoder, VAE router, threshold.

``iter_learn_task`` is a generator: it yields ``Progress`` between steps and returns the saved
``TaskInfo``. Closing it (or raising out of the loop) between two yields cancels the training
and leaves the library untouched: the task is only written, atomically, at the very end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from casam.alignment import AlignmentLayer
from casam.backbones import Backbone
from casam.config import LearnSettings
from casam.errors import InputError
from casam.library import TaskInfo, TaskLibrary, new_task_info, validate_name
from casam.metrics import boundary_iou, iou
from casam.predictor import Predictor, layer_from_state
from casam.preprocess import check_image, mask_box
from casam.router import fit_router


@dataclass(frozen=True)
class Progress:
    """One step of learning. ``stage`` is embed, align, vae, evaluate or save."""

    stage: str
    step: int
    total: int
    epoch: int | None = None
    loss: float | None = None
    message: str = ""

    def __str__(self) -> str:
        s = f"{self.stage} {self.step}/{self.total}"
        if self.epoch is not None:
            s += f" epoch {self.epoch}"
        if self.loss is not None:
            s += f" loss {self.loss:.4f}"
        return s + (f" {self.message}" if self.message else "")


@dataclass(frozen=True)
class Sample:
    """One annotated object: the image it is in and its binary mask."""

    image: int
    mask: np.ndarray


def objects_of(mask: np.ndarray, label: int | None = None) -> list[np.ndarray]:
    """Binary masks of the objects of a label image: each nonzero value (or just ``label``)."""
    m = np.asarray(mask)
    if m.dtype.kind == "f":
        if not np.isfinite(m).all():
            raise InputError("mask has NaN/Inf values; masks must hold integer labels")
        m = m.astype(np.int64)
    if label is not None:
        fg = m == label
        return [fg] if fg.any() else []
    if m.dtype == bool:
        return [m] if m.any() else []
    values = np.unique(m)
    return [m == v for v in values if v != 0]


def collect_samples(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    label: int | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[int], list[Sample]]:
    """Validate (image, mask) pairs; return the indices of images with objects and the objects."""
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    used, samples = [], []
    for i, (img, msk) in enumerate(zip(images, masks)):
        what = names[i] if names else f"image {i}"
        a = check_image(img, what)
        m = np.asarray(msk)
        if m.ndim == 3 and m.shape[-1] in (3, 4) and m.shape[:2] == a.shape[:2]:
            m = m[..., 0]
        if m.shape != a.shape[:2]:
            raise InputError(
                f"{what} is {a.shape[0]}x{a.shape[1]} but its mask is {'x'.join(map(str, m.shape))}; they must match"
            )
        objs = objects_of(m, label)
        if objs:
            used.append(i)
            samples.extend(Sample(i, o) for o in objs)
    return used, samples


def split_holdout(n: int, settings: LearnSettings) -> tuple[list[int], list[int]]:
    """Evenly spaced held-out images (representative of a volume's extent); the rest train."""
    n_hold = min(settings.max_holdout, int(n * settings.holdout))
    if n - n_hold < settings.min_images:
        n_hold = max(0, n - settings.min_images)
    if n_hold == 0:
        return list(range(n)), []
    held = sorted({int(round(x)) for x in np.linspace(0, n - 1, n_hold + 2)[1:-1]})
    return [i for i in range(n) if i not in held], held


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


def _use_bf16(s: LearnSettings, backbone: Backbone) -> bool:
    return (
        bool(s.bf16 if s.bf16 is not None else bf16_supported()) and backbone.device.type == "cpu"
    )


def train_alignment(
    backbone: Backbone,
    z: torch.Tensor,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    settings: LearnSettings,
    layer: AlignmentLayer | None = None,
    where: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
) -> Generator[Progress, None, AlignmentLayer]:
    """Train (or continue) an Alignment Layer through the frozen decoder.

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
    layer = layer.to(backbone.device).train().requires_grad_(True)
    opt = torch.optim.Adam(layer.parameters(), lr=s.lr)
    n = boxes.shape[0]
    per_epoch = math.ceil(n / s.batch_size)
    total = per_epoch * s.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, total) / max(total, 1)))
    )
    use_bf16 = _use_bf16(s, backbone)
    step = 0
    for epoch in range(1, s.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = perm[b * s.batch_size : (b + 1) * s.batch_size]
            bx = jitter_boxes(boxes[idx], s.box_jitter, backbone.input_size, gen).to(
                backbone.device
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits, _ = backbone.decode(layer(z[where[idx]].to(backbone.device)), bx)
            loss = dice_bce(logits[:, 0], targets[idx].to(backbone.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            yield Progress("align", step, total, epoch, loss.item())
    return layer.eval().requires_grad_(False)


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
) -> Generator[Progress, None, TaskInfo]:
    """Learn (or, with ``extend``, continue) a task from images and their label masks."""
    s = settings or LearnSettings()
    name = validate_name(name)
    if predictor is None:
        predictor = Predictor(library=library)
    lib = (
        predictor.library
        if library is None
        else (library if isinstance(library, TaskLibrary) else TaskLibrary(library))
    )
    if lib is None:
        raise InputError("no task library given: pass library=FOLDER")
    backbone = predictor.backbone
    previous = None
    if extend:
        previous = lib.load(name)
        if previous.info.backbone != backbone.identity:
            raise InputError(
                f"task '{name}' was made with {previous.info.backbone}, not {backbone.identity}"
            )
        s = LearnSettings.from_dict(
            {
                **previous.info.settings,
                **{k: v for k, v in s.to_dict().items() if k in ("epochs", "lr", "seed")},
            }
        )
    elif not overwrite:
        lib.ensure_free(name)

    used, samples = collect_samples(images, masks, label, image_names)
    if not used:
        raise InputError(
            "no image has an annotated object (every mask is empty); annotate some first"
        )
    train_img, hold_img = split_holdout(len(used), s)
    if len(train_img) < s.min_images and not extend:
        raise InputError(
            f"only {len(used)} annotated image(s); a task needs at least {s.min_images} for its "
            f"{s.folds}-fold threshold calibration — annotate more slices"
        )
    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)

    # 1. embeddings (cached: a revisited image costs no encoder call)
    emb = {}
    for k, (j, e) in enumerate(predictor.iter_embed([images[i] for i in used])):
        emb[used[j]] = e
        yield Progress("embed", k + 1, len(used), message=f"image {k + 1}/{len(used)}")

    train_set = {used[k] for k in train_img}
    hold_set = {used[k] for k in hold_img}
    train_samples = [x for x in samples if x.image in train_set]
    hold_samples = [x for x in samples if x.image in hold_set]
    order = sorted(train_set)
    slot = {i: j for j, i in enumerate(order)}
    z_all = torch.stack([emb[i].z for i in order])
    targets = torch.stack(
        [backbone.lowres_target(x.mask, emb[x.image].geometry) for x in train_samples]
    )
    boxes = torch.from_numpy(
        np.stack([emb[x.image].geometry.boxes_to_input(mask_box(x.mask))[0] for x in train_samples])
    )
    where = torch.tensor([slot[x.image] for x in train_samples])

    # 2. the Alignment Layer, through the frozen decoder
    layer = layer_from_state(previous.alignment) if previous else None
    layer = yield from train_alignment(
        backbone, z_all, boxes, targets, s, layer=layer, where=where, gen=gen
    )
    use_bf16 = _use_bf16(s, backbone)

    # 3. the VAE router and its threshold (features of the training images only)
    feats = torch.stack([emb[i].feature for i in order]).float()
    if previous is not None and "features" in previous.router:
        feats = torch.cat([previous.router["features"].float(), feats])
    vae_kw = dict(
        steps=s.vae_steps, batch=s.vae_batch, lr=s.vae_lr, hidden=s.vae_hidden, latent=s.vae_latent
    )
    yield Progress("vae", 0, 1, message=f"VAE and {s.folds}-fold threshold")
    vae, threshold, _ = fit_router(
        feats, folds=s.folds, percentile=s.percentile, seed=s.seed, beta=s.beta, **vae_kw
    )
    threshold *= s.threshold_margin
    yield Progress("vae", 1, 1, message=f"threshold {threshold:.4g}")

    # 4. held-out IoU: plain SAM versus the new layer, box = the object's bounding box
    scores: dict[str, list[float]] = {
        "iou_sam": [],
        "iou_task": [],
        "biou_sam": [],
        "biou_task": [],
    }
    for k, x in enumerate(hold_samples):
        e = emb[x.image]
        box = mask_box(x.mask)
        bt = torch.from_numpy(e.geometry.boxes_to_input(box)).to(backbone.device)
        with torch.no_grad():
            for key, z in (("sam", e.z[None]), ("task", layer(e.z[None].to(backbone.device)))):
                logits, _ = backbone.decode(z.to(backbone.device), bt)
                pred = (backbone.upscale_masks(logits, e.geometry)[0] > 0).cpu().numpy()
                scores[f"iou_{key}"].append(iou(pred, x.mask))
                scores[f"biou_{key}"].append(boundary_iou(pred, x.mask))
        yield Progress("evaluate", k + 1, len(hold_samples))
    means = {k: (float(np.mean(v)) if v else None) for k, v in scores.items()}

    # 5. save, atomically (nothing was written before this point)
    info = new_task_info(
        name,
        backbone=backbone.identity,
        threshold=threshold,
        blocks=layer.n_blocks,
        n_images=len(train_img) + (previous.info.n_images if previous else 0),
        n_objects=len(train_samples) + (previous.info.n_objects if previous else 0),
        n_holdout=len(hold_img),
        settings={
            **s.to_dict(),
            "bf16": use_bf16,
            "train_seconds": round(time.perf_counter() - t0, 1),
        },
        **means,
    )
    router_state = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    router_state["features"] = feats
    yield Progress("save", 0, 1)
    saved = lib.save(info, layer.state_dict(), router_state, overwrite=overwrite or extend)
    if predictor.library is not None and predictor.library.root == lib.root:
        predictor.reload_library()
    return saved


def learn_task(*args, callback: Callable[[Progress], None] | None = None, **kwargs) -> TaskInfo:
    """``iter_learn_task`` run to the end; ``callback`` sees every Progress."""
    from casam.progress import drive

    return drive(iter_learn_task(*args, **kwargs), callback)
