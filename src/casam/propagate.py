"""One prompt on one slice -> the structure through the whole volume (slice-by-slice propagation).

Slice k is segmented from the user's prompt (box and/or points, or a mask drawn by hand); then
k+1, k+2, ... and k-1, k-2, ..., each prompted from its neighbour's result: the bounding box of the
neighbour's mask (widened by ``box_margin``), optionally its interior point (the pixel farthest
from the mask's edge) and its low-res logits as SAM's ``mask_input``. A direction stops, without
keeping the slice that triggered the stop, when (:func:`stop_reason`):

- ``empty``: the mask has fewer than ``min_pixels`` pixels (the structure ended);
- ``low score``: SAM's own IoU estimate is below ``min_score`` (it no longer sees an object);
- ``collapse``: the area fell below ``min_shrink`` x the neighbour's area;
- ``area jump``: the area grew above ``max_growth`` x the neighbour's (leaking into a neighbour);
- ``appearance``: the mean intensity inside the mask is more than ``max_shift`` of the seed mask's
  standard deviations away from the seed mask's mean (past the organ's end SAM still finds
  *something* in the box, with a confident score, but it is another tissue);
- ``score drop``, ``no overlap``: SAM's estimate below ``min_score_ratio`` x the seed's, IoU with
  the neighbour's mask below ``min_overlap`` (measured, off by default);
- ``edited``: the next slice is in ``locked`` (edited by hand: kept as it is);
- ``end of volume``.

Routing: every slice is routed on its own embedding (``routing="slice"``, as 2-D prediction does)
or the volume by majority (``"majority"``: propagate routed per slice, then again with the task
most slices chose). ``docs/benchmark-interactive.md`` measures both. ``iter_propagate`` is a
generator of :class:`PropagationProgress` (run it with :func:`casam.progress.drive`; closing it
between slices cancels), uses the predictor's embedding cache and embeds the next slices ahead of
the front in a background thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from casam.errors import InputError
from casam.prefetch import Prefetcher
from casam.preprocess import mask_box


@dataclass(frozen=True)
class PropagateSettings:
    """How a prompt travels from slice to slice (defaults: docs/benchmark-interactive.md)."""

    min_score: float = 0.5
    """Stop when SAM's predicted IoU of a slice's mask falls below this."""
    min_pixels: int = 10
    """Stop when a slice's mask has fewer pixels than this."""
    min_shrink: float = 0.2
    """Stop when the area falls below this fraction of the neighbour's ("collapse")."""
    max_growth: float = 2.0
    """Stop when the area grows above this many times the neighbour's ("area jump")."""
    min_score_ratio: float = 0.0
    """Stop when SAM's IoU estimate falls below this fraction of the seed slice's ("score drop")."""
    min_overlap: float = 0.0
    """Stop when the mask's IoU with the neighbour's mask falls below this ("no overlap")."""
    max_shift: float = 2.0
    """Stop when the mean intensity in the mask moves more than this many of the seed mask's
    standard deviations away from the seed mask's mean ("appearance")."""
    box_momentum: float = 0.0
    """The next box is this share of the previous prompt's box plus the rest of the neighbour
    mask's (widened) box: a box that lags behind the mask drifts less."""
    box_margin: float = 0.1
    """The neighbour's box is widened by this fraction of its size on each side..."""
    box_pad: float = 2.0
    """... and by at least this many pixels."""
    seed_margins: bool = True
    """Widen each side by as much as the user's box lay outside SAM's mask on the seed slice."""
    use_logits: bool = False
    """Feed the neighbour's low-res logits as SAM's ``mask_input``."""
    interior_point: bool = False
    """Add the neighbour mask's innermost pixel as a positive point."""
    routing: str = "slice"
    """``slice``: each slice routed on its own; ``majority``: one task for the volume."""
    prefetch: int = 2
    """Slices embedded ahead of the front in a background thread (0: none)."""

    def __post_init__(self) -> None:
        if self.routing not in ("slice", "majority"):
            raise InputError(f"routing must be 'slice' or 'majority', got {self.routing!r}")
        if not 0 < self.min_shrink < 1 < self.max_growth:
            raise InputError("need 0 < min_shrink < 1 < max_growth")


@dataclass(frozen=True)
class SliceResult:
    """What propagation kept on one slice."""

    index: int
    task: str | None
    """The task used on this slice; None = plain SAM."""
    score: float
    """SAM's predicted IoU of the slice's mask (NaN for a seed mask drawn by hand)."""
    pixels: int


@dataclass(frozen=True)
class PropagationProgress:
    """One slice done: ``step`` slices segmented so far, at most ``total`` (the volume's)."""

    step: int
    total: int
    index: int
    pixels: int
    stop: str | None = None

    def __str__(self) -> str:
        s = f"slice {self.index}: {self.pixels} px ({self.step}/{self.total})"
        return s + (f", stop: {self.stop}" if self.stop else "")


@dataclass(frozen=True)
class Propagation:
    """A structure through a volume."""

    masks: np.ndarray
    """(Z, H, W) bool, the volume's grid."""
    slices: list[SliceResult]
    """Kept slices, by index."""
    stops: dict[str, str]
    """Why each direction (``up``: increasing index, ``down``) stopped, e.g. 'empty at 41'."""
    logits: dict[int, np.ndarray] = field(default_factory=dict)
    """(256, 256) low-res logits of each kept slice (absent for a hand-drawn seed)."""
    routing: str = "slice"

    @property
    def indices(self) -> list[int]:
        return [r.index for r in self.slices]

    @property
    def tasks(self) -> Counter:
        """How many kept slices used each task (None = plain SAM)."""
        return Counter(r.task for r in self.slices)


def check_volume(volume: np.ndarray, slice_index: int) -> np.ndarray:
    """A (Z, H, W) or (Z, H, W, 3) volume and a slice index in range, or one clear error."""
    v = np.asarray(volume)
    if v.ndim == 2 or (v.ndim == 3 and v.shape[-1] in (3, 4) and v.shape[0] > 4):
        raise InputError(
            f"propagation needs a 3-D volume (Z, H, W); this image is 2-D {v.shape}: "
            "segment it with a box instead"
        )
    if v.ndim not in (3, 4):
        raise InputError(f"volume has shape {v.shape}; expected (Z, H, W) or (Z, H, W, 3)")
    n = v.shape[0]
    if not isinstance(slice_index, (int, np.integer)) or not 0 <= slice_index < n:
        raise InputError(
            f"slice {slice_index} is out of range: the volume has {n} slices (0..{n - 1})"
        )
    return v


def stop_reason(
    pixels: int,
    score: float,
    prev_pixels: int,
    s: PropagateSettings,
    seed_score: float = float("nan"),
    overlap: float = 1.0,
    shift: float = 0.0,
) -> str | None:
    """Why a slice (``pixels``, SAM score ``score``, IoU ``overlap`` with the neighbour's mask,
    intensity ``shift`` from the seed's in seed standard deviations) ends the structure; None: it
    does not. ``seed_score``: SAM's score on the seed slice (NaN for a hand-drawn seed)."""
    if pixels < s.min_pixels:
        return "empty"
    if score < s.min_score:
        return "low score"
    if score < s.min_score_ratio * seed_score:  # False when seed_score is NaN
        return "score drop"
    if pixels < s.min_shrink * prev_pixels:
        return "collapse"
    if pixels > s.max_growth * prev_pixels:
        return "area jump"
    if overlap < s.min_overlap:
        return "no overlap"
    if shift > s.max_shift:
        return "appearance"
    return None


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two 2-D masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def appearance(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a slice's intensity (channels averaged) inside ``mask``."""
    a = np.asarray(image, dtype=np.float64)
    vals = (a.mean(-1) if a.ndim == 3 else a)[mask]
    return float(vals.mean()), float(vals.std())


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The XY pixel of a 2-D mask farthest from its edge (the click 'at the centre'), (2,)."""
    from scipy.ndimage import distance_transform_edt

    d = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return np.array([c, r], dtype=np.float64)


def box_margins(box: np.ndarray | None, mask: np.ndarray, s: PropagateSettings) -> np.ndarray:
    """How far the user's box lies outside the mask SAM made from it, per side (left, top,
    right, bottom) as fractions of the mask box's width/height; ``box_margin`` without a box."""
    if box is None or not s.seed_margins:
        return np.full(4, s.box_margin)
    x0, y0, x1, y1 = mask_box(mask)
    b = np.asarray(box, dtype=float).reshape(4)
    w, h = x1 - x0, y1 - y0
    out = np.array([(x0 - b[0]) / w, (y0 - b[1]) / h, (b[2] - x1) / w, (b[3] - y1) / h])
    return np.clip(out, 0.0, 0.5)


def neighbour_prompt(
    mask: np.ndarray,
    logits: np.ndarray | None,
    s: PropagateSettings,
    margins: np.ndarray | None = None,
) -> dict[str, object]:
    """The ``predict_embedding`` keyword arguments that carry a slice's result to its neighbour.

    ``margins``: (4,) widening of the mask's box per side, fractions of its width/height
    (default ``box_margin`` on every side), each at least ``box_pad`` pixels.
    """
    h, w = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    m = np.full(4, s.box_margin) if margins is None else np.asarray(margins, dtype=float)
    grow = np.maximum(s.box_pad, m * np.array([x1 - x0, y1 - y0] * 2))
    box = np.array(
        [max(0.0, x0 - grow[0]), max(0.0, y0 - grow[1]), min(w, x1 + grow[2]), min(h, y1 + grow[3])]
    )
    out: dict[str, object] = {"boxes": box[None]}
    if s.interior_point:
        out["points"] = interior_point(mask)[None]
        out["labels"] = np.ones(1, dtype=np.int64)
    if s.use_logits and logits is not None:
        out["mask_input"] = logits
    return out


def _seed(predictor, pf: Prefetcher, k: int, prompt: dict, mask, task) -> tuple:
    """The prompted slice: (mask, logits, SliceResult)."""
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        if m.shape != pf.volume.shape[1:3]:
            raise InputError(f"seed mask is {m.shape}, the slices are {pf.volume.shape[1:3]}")
        if not m.any():
            raise InputError("the seed mask is empty: draw the structure on the slice first")
        return m, None, SliceResult(k, None, float("nan"), int(m.sum()))
    pred = predictor.predict_embedding(pf.get(k), task=task, **prompt)
    m = pred.masks[0]
    if not m.any():
        raise InputError(f"the prompt on slice {k} gave an empty mask: draw a box around it")
    return m, pred.logits[0], SliceResult(k, pred.task, float(pred.scores[0]), int(m.sum()))


@dataclass
class _Job:
    """The state one propagation pass shares between its two directions."""

    predictor: object
    pf: Prefetcher
    task: str | None
    s: PropagateSettings
    locked: set[int]
    margins: np.ndarray | None = None
    box: np.ndarray | None = None
    """The seed's prompt box (the start of ``box_momentum``)."""
    look: tuple[float, float] = (0.0, 0.0)
    """The seed mask's intensity mean and standard deviation."""
    seed_score: float = float("nan")
    out: dict[int, tuple] = field(default_factory=dict)
    done: int = 0

    def prompt(self, mask, logits, prev_box) -> dict:
        """The next slice's prompt from its neighbour's result (and the previous prompt box)."""
        prompt = neighbour_prompt(mask, logits, self.s, self.margins)
        if self.s.box_momentum and prev_box is not None:
            a = self.s.box_momentum
            prompt["boxes"] = a * np.asarray(prev_box).reshape(1, 4) + (1 - a) * prompt["boxes"]
        return prompt

    def stop(self, j: int, m: np.ndarray, score: float, prev: np.ndarray, prev_pixels: int):
        shift = 0.0
        if np.isfinite(self.s.max_shift) and m.any():
            mean, sd = self.look
            shift = abs(appearance(self.pf.volume[j], m)[0] - mean) / max(sd, 1e-6)
        ov = overlap(m, prev) if self.s.min_overlap > 0 else 1.0
        return stop_reason(int(m.sum()), score, prev_pixels, self.s, self.seed_score, ov, shift)


def _walk(job: _Job, start: int, direction: int) -> Generator[PropagationProgress, None, str]:
    """Propagate from slice ``start`` in one direction; returns why it stopped."""
    mask, logits, info = job.out[start]
    vol, j, box = job.pf.volume, start + direction, job.box
    while 0 <= j < len(vol):
        if j in job.locked:
            return f"edited at {j}"
        job.pf.schedule(j, direction)
        prompt = job.prompt(mask, logits, box)
        box = prompt["boxes"]
        pred = job.predictor.predict_embedding(job.pf.get(j), task=job.task, **prompt)
        m, score = pred.masks[0], float(pred.scores[0])
        why = job.stop(j, m, score, mask, info.pixels)
        job.done += 1
        yield PropagationProgress(job.done, len(vol), j, int(m.sum()), why)
        if why:
            return f"{why} at {j}"
        mask, logits = m, pred.logits[0]
        info = SliceResult(j, pred.task, score, int(m.sum()))
        job.out[j] = (mask, logits, info)
        j += direction
    return "end of volume"


def _run(predictor, v, k, prompt, mask, task, s, locked) -> Generator:
    job = _Job(predictor, Prefetcher(predictor, v, s.prefetch), task, s, locked)
    try:
        job.pf.schedule(k, 1)
        seed = _seed(predictor, job.pf, k, prompt, mask, task)
        job.margins = box_margins(prompt["boxes"] if mask is None else None, seed[0], s)
        job.box = prompt["boxes"] if mask is None else None
        job.look, job.seed_score = appearance(v[k], seed[0]), seed[2].score
        job.out[k], job.done = seed, 1
        yield PropagationProgress(1, len(v), k, seed[2].pixels)
        stops = {}
        for name, d in (("up", 1), ("down", -1)):
            stops[name] = yield from _walk(job, k, d)
    finally:
        job.pf.close()
    out = job.out
    masks = np.zeros(v.shape[:3], dtype=bool)
    for j, (m, _, _) in out.items():
        masks[j] = m
    logits = {j: lg for j, (_, lg, _) in out.items() if lg is not None}
    slices = [out[j][2] for j in sorted(out)]
    return Propagation(masks, slices, stops, logits, s.routing)


def iter_propagate(
    predictor,
    volume: np.ndarray,
    slice_index: int,
    box: Sequence[float] | np.ndarray | None = None,
    points: np.ndarray | Sequence | None = None,
    labels: np.ndarray | Sequence | None = None,
    mask_input: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    task: str | None = "auto",
    settings: PropagateSettings | None = None,
    locked: Collection[int] = (),
) -> Generator[PropagationProgress, None, Propagation]:
    """Segment one structure through ``volume`` (Z, H, W) from a prompt on ``slice_index``.

    The prompt is an XYXY ``box`` and/or XY ``points`` with ``labels`` (original pixels of the
    slice; see :meth:`casam.predictor.Predictor.predict`), or a hand-drawn ``mask`` (H, W) taken
    as it is. ``locked``: slice indices edited by hand, never changed (propagation stops there).
    """
    s = settings or PropagateSettings()
    v = check_volume(volume, slice_index)
    k = int(slice_index)
    if mask is None and box is None and points is None:
        raise InputError("give a box, points or a mask on the slice to propagate from")
    prompt = {"boxes": None if box is None else np.asarray(box, dtype=float).reshape(1, -1)}
    prompt.update(points=points, labels=labels, mask_input=mask_input)
    locked = {int(j) for j in locked} - {k}
    first = yield from _run(predictor, v, k, prompt, mask, task, s, locked)
    if s.routing != "majority" or task != "auto":
        return first
    tasks = [r.task for r in first.slices if not np.isnan(r.score)]
    winner = Counter(tasks).most_common(1)[0][0] if tasks else None
    if all(t == winner for t in tasks):
        return first
    second = yield from _run(predictor, v, k, prompt, mask, winner or "sam", s, locked)
    return replace(second, routing="majority")


def propagate(
    predictor, volume: np.ndarray, slice_index: int, callback=None, **kwargs
) -> Propagation:
    """:func:`iter_propagate` run to its end; ``callback`` sees every PropagationProgress."""
    from casam.progress import drive

    return drive(iter_propagate(predictor, volume, slice_index, **kwargs), callback)
