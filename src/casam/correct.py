"""A click as a local correction of a mask, with SAM's strength: boxes.

LiteMedSAM was trained on boxes only, and a task's Alignment Layer is learned from boxes by
default, so a click is not sent to SAM as a point prompt. Instead (docs/benchmark-interactive.md
measured the choice on the validation organs):

- a **positive** click outside the mask decodes a few boxes centred on the click (half-sides
  ``sizes`` x the click's scale: its distance to the mask), keeps the candidate whose mask
  holds the click and that SAM scores best, and adds the part of it connected to the click;
- a **negative** click inside the mask decodes boxes centred on it the same way (scale: its
  distance to the mask's edge) and removes the part of the mask SAM finds there; when no
  candidate holds the click, it removes the mask's pixels within that distance of the click;
- either way nothing outside the chosen local box changes.

:func:`apply_clicks` runs the clicks of one object in order; :class:`casam.clicks.ClickSession`
runs the same :func:`correct` one click at a time (with undo), so the dock, ``Predictor.predict``
and ``casam segment --point/--negative-point`` give the same mask for the same clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from casam.errors import InputError


@dataclass(frozen=True)
class ClickSettings:
    """How far a click reaches (defaults chosen on the validation organs)."""

    sizes: tuple[float, ...] = (1.5, 3.0)
    """Local box half-sides, as multiples of the click's scale (one decode each)."""
    min_half: float = 4.0
    """The smallest local box half-side, in pixels."""
    max_half: float = 0.5
    """The largest local box half-side, as a fraction of the image's larger side."""
    sam_from: float = 4.0
    """Below this scale (pixels) a click paints a disc instead of asking SAM (an error a few
    pixels wide is finer than SAM's low-res mask)."""
    disc: float = 1.0
    """A disc's radius is this x the click's scale, less half a pixel (the click's pixel at
    least): it stays inside the error the click sits in."""
    fill: str = "logits"
    """A fine click's region: ``disc``, or ``logits``: the pixels about the click SAM finds at
    least as object-like (positive) or at most (negative) as the click's pixel, connected to it,
    within ``reach`` x its scale (SAM's own uncertainty along the mask's edge)."""
    reach: float = 1.25
    """How far a ``logits`` fill reaches, as a multiple of the click's scale."""
    sam_positive: bool = True
    """Coarse positive clicks ask SAM too (else they are filled like fine ones)."""
    negative: str = "outside"
    """What SAM's local mask tells a negative click: ``outside`` (the click lies off the object
    SAM finds in the box: remove the mask's part off it), ``inside`` (SAM's local object holds
    the click: remove that object), ``disc`` (no SAM: a disc)."""


@dataclass
class State:
    """One object's current mask (H, W), low-res logits (256, 256) and SAM's estimate."""

    mask: np.ndarray
    logits: np.ndarray
    score: float
    decodes: int = 0
    sam_logits: bool = True
    """The logits are SAM's (edited by clicks); False for a mask given as it is (then a
    ``logits`` fill has nothing to read and paints a disc)."""


def click_scale(mask: np.ndarray, x: float, y: float, positive: bool) -> float:
    """Distance in pixels from the click to the mask (positive) or to its edge (negative)."""
    from scipy.ndimage import distance_transform_edt

    h, w = mask.shape
    r, c = min(int(y), h - 1), min(int(x), w - 1)
    region = mask if positive else ~mask
    if not region.any():
        return float(max(h, w)) / 4
    win = _window(mask.shape, r, c, 64)
    while True:  # the distance is found in a window around the click, grown until it holds
        d = distance_transform_edt(~region[win])[r - win[0].start, c - win[1].start]
        if d < (win[0].stop - win[0].start) / 2 or win == _window(mask.shape, r, c, 1 << 20):
            return float(d)
        win = _window(mask.shape, r, c, 2 * (win[0].stop - win[0].start))


def _window(shape, r: int, c: int, half: int) -> tuple[slice, slice]:
    return slice(max(0, r - half), min(shape[0], r + half + 1)), slice(
        max(0, c - half), min(shape[1], c + half + 1)
    )


def local_boxes(x: float, y: float, scale: float, shape, s: ClickSettings) -> np.ndarray:
    """(K, 4) XYXY boxes centred on the click, one per ``s.sizes``, clipped to the image."""
    h, w = shape
    top = s.max_half * max(h, w)
    out = []
    for k in s.sizes:
        half = float(np.clip(k * scale, s.min_half, top))
        out.append([x + 0.5 - half, y + 0.5 - half, x + 0.5 + half, y + 0.5 + half])
    return np.clip(np.array(out), 0, [w, h, w, h])


def _connected(m: np.ndarray, r: int, c: int) -> np.ndarray:
    from scipy.ndimage import label

    lab, _ = label(m)
    return lab == lab[r, c] if lab[r, c] else np.zeros_like(m)


def _in_box(shape, box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = np.round(box).astype(int)
    inside = np.zeros(shape, bool)
    inside[max(0, y0) : y1, max(0, x0) : x1] = True
    return inside


def _lowres_of(geo, region: np.ndarray, lowres: int) -> np.ndarray:
    """An (H, W) bool region -> the (lowres, lowres) decoder frame (nearest, for logits edits)."""
    rh, rw = geo.resized
    centres = (np.arange(lowres) + 0.5) * geo.size / lowres
    ys, xs = (centres * geo.height / rh).astype(int), (centres * geo.width / rw).astype(int)
    vy, vx = ys < geo.height, xs < geo.width
    out = np.zeros((lowres, lowres), bool)
    out[np.ix_(vy, vx)] = region[np.ix_(ys[vy], xs[vx])]
    return out


def correct(predictor, e, task, state: State, x: float, y: float, positive: bool, s):
    """``state`` after one click at (x, y) on the image of embedding ``e``, decoding with
    ``predictor.sam_prompts`` and ``task`` (a task name or ``"sam"``). Returns a new State."""
    m, geo = state.mask, e.geometry
    r, c = int(y), int(x)
    if m[r, c] == positive:  # already right where the user clicked: nothing to correct
        return State(m, state.logits, state.score, state.decodes, state.sam_logits)
    scale = click_scale(m, x, y, positive)
    part, lo, n = None, state.logits, 0
    if scale >= s.sam_from and (s.sam_positive or not positive):

        def decode(b):
            return predictor.sam_prompts(e, b, task)

        part, lo, n = _sam_part(decode, geo, state, x, y, positive, scale, s)
    if part is None:  # a fine error, or SAM finds nothing holding the click
        if s.fill == "logits" and state.sam_logits:
            part = _logit_fill(predictor, geo, state, r, c, positive, scale, s)
        if part is None:
            part = _disc(m.shape, r, c, s.disc * scale - 0.5) & (~m if positive else m)
        edit = _lowres_of(geo, part, lo.shape[-1])
        lo = np.where(edit, np.maximum(lo, 1.0) if positive else np.minimum(lo, -1.0), lo)
    new = m | part if positive else m & ~part
    return State(new, lo.astype(np.float32), state.score, state.decodes + n, state.sam_logits)


def _disc(shape, r: int, c: int, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - r) ** 2 + (xx - c) ** 2 <= max(0.0, radius) ** 2


def _logit_fill(predictor, geo, state: State, r, c, positive, scale, s) -> np.ndarray | None:
    """The pixels near the click SAM finds at least (positive) / at most as object-like."""
    import torch

    lo = torch.from_numpy(np.ascontiguousarray(state.logits[None, None], dtype=np.float32))
    full = predictor.backbone.upscale_masks(lo, geo)[0].numpy()
    v = full[r, c]
    like = (full >= v) if positive else (full <= v)
    region = (
        like & (~state.mask if positive else state.mask) & _disc(full.shape, r, c, s.reach * scale)
    )
    part = _connected(region, r, c)
    return part if part.any() else None


def _sam_part(decode, geo, state: State, x, y, positive, scale, s: ClickSettings) -> tuple:
    """SAM's local correction: (the pixels to add or remove or None, new logits, decodes)."""
    m = state.mask
    r, c = int(y), int(x)
    if not positive and s.negative == "disc":
        return None, state.logits, 0
    boxes = local_boxes(x, y, scale, m.shape, s)
    pred = decode(boxes)
    holds = positive or s.negative == "inside"  # the wanted candidate holds the click
    best = [i for i in np.argsort(-pred.scores) if pred.masks[i][r, c] == holds]
    if not best:
        return None, state.logits, len(boxes)
    i = int(best[0])
    found = pred.masks[i] if holds else ~pred.masks[i]
    found = found & _in_box(m.shape, boxes[i])
    part = _connected(found if positive else found & m, r, c)
    edit, lo = _lowres_of(geo, part, state.logits.shape[-1]), state.logits
    local = np.abs(pred.logits[i])
    lo = np.where(edit, np.maximum(lo, local) if positive else np.minimum(lo, -local), lo)
    return part, lo, len(boxes)


def start_state(predictor, e, box, task, mask_input=None, mask=None) -> State | None:
    """The object before any click: ``mask`` as it is (e.g. the mask on screen), else its box's
    mask, else the mask of ``mask_input`` logits (None: no object yet)."""
    import torch

    geo = e.geometry
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (geo.height, geo.width):
            raise InputError(f"the start mask is {m.shape}, the image {(geo.height, geo.width)}")
        lo = predictor.backbone.lowres_target(m, geo).numpy() * 8.0 - 4.0
        return State(m, lo.astype(np.float32), float("nan"), 0, sam_logits=False)
    if box is not None:
        p = predictor.sam_prompts(e, box, task, mask_input=mask_input)
        return State(p.masks[0], p.logits[0], float(p.scores[0]), 1)
    if mask_input is not None:
        lo = np.asarray(mask_input, dtype=np.float32).reshape(1, 1, *np.shape(mask_input)[-2:])
        up = predictor.backbone.upscale_masks(torch.from_numpy(lo), geo)[0].numpy()
        return State(up > 0, lo[0, 0], float("nan"), 0)
    return None


def first_click(predictor, e, task, x: float, y: float, s: ClickSettings) -> State:
    """A positive click with no object yet: boxes centred on it at a few sizes relative to the
    image; SAM's best-scored mask that holds the click."""
    geo = e.geometry
    side = max(geo.height, geo.width)
    empty = State(np.zeros((geo.height, geo.width), bool), np.full((256, 256), -20.0), 0.0)
    fine = ClickSettings(sizes=(0.05, 0.1, 0.2), min_half=s.min_half, max_half=s.max_half)
    boxes = local_boxes(x, y, side, (geo.height, geo.width), fine)
    pred = predictor.sam_prompts(e, boxes, task)
    hold = [i for i in np.argsort(-pred.scores) if pred.masks[i][int(y), int(x)]]
    if not hold:
        return State(empty.mask, empty.logits, 0.0, len(boxes))
    i = int(hold[0])
    mask = _connected(pred.masks[i], int(y), int(x))
    return State(mask, pred.logits[i], float(pred.scores[i]), len(boxes))


def step(predictor, e, task, state: State | None, x, y, positive, s: ClickSettings) -> State:
    """One click on one object (``state`` None: no object yet), through the predictor's
    :meth:`~casam.predictor.Predictor.sam_prompts` with ``task`` (a task name or ``"sam"``)."""
    if state is not None:
        return correct(predictor, e, task, state, x, y, positive, s)
    if not positive:
        raise InputError("only negative clicks and no object yet: draw a box or click the object")
    return first_click(predictor, e, task, x, y, s)


def apply_clicks(
    predictor, e, box, clicks, task, mask_input=None, mask=None, s: ClickSettings | None = None
):
    """One object's mask from its ``mask``, box or ``mask_input`` and its clicks, in order: a
    State. ``clicks`` are (x, y, positive) in original pixels (already checked); ``task`` a
    task name or ``"sam"``."""
    s = s or ClickSettings()
    state = start_state(predictor, e, box, task, mask_input, mask)
    for x, y, positive in clicks:
        state = step(predictor, e, task, state, x, y, positive, s)
    return state
