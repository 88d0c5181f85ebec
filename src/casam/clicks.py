"""Correcting a mask with clicks: a box plus positive/negative clicks on one slice, with undo.

:class:`ClickSession` is the state of one object on one slice (the dock keeps one per object and
slice; the benchmark drives one with simulated clicks). Each click is a local correction of the
current mask (``casam.correct``: the rule ``Predictor.predict(points=...)`` and ``casam segment
--point/--negative-point`` apply too); ``mode="points"`` sends every click to SAM as a point
prompt instead (SAM's own way, kept to compare: docs/benchmark-interactive.md).
:func:`next_click` is the standard simulated user of interactive-segmentation papers: the next
click goes to the centre (the pixel farthest from its edge) of the largest error region, positive
on missed foreground, negative on a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from casam.correct import ClickSettings, State, start_state, step
from casam.errors import InputError


@dataclass(frozen=True)
class Click:
    """One point prompt: XY in original pixels, positive (object) or negative (background)."""

    x: float
    y: float
    positive: bool = True


def next_click(pred: np.ndarray, gt: np.ndarray) -> Click | None:
    """Where a careful user clicks next on ``pred`` (H, W) against ``gt`` (None: no error)."""
    from scipy.ndimage import distance_transform_edt, label

    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    best: tuple[int, np.ndarray, bool] | None = None
    for region, positive in ((gt & ~pred, True), (pred & ~gt, False)):
        lab, n = label(region)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        i = int(np.argmax(sizes))
        if best is None or sizes[i] > best[0]:
            best = (int(sizes[i]), lab == i + 1, positive)
    if best is None:
        return None
    d = distance_transform_edt(np.pad(best[1], 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return Click(float(c), float(r), best[2])


class ClickSession:
    """A box and clicks on one object of one 2-D image, with undo.

    ``predictor``: a :class:`casam.predictor.Predictor` (or anything with its ``embed``,
    ``resolve_task`` and ``sam_prompts``); ``box``: XYXY original pixels or None (clicks only);
    ``mask_input``: logits to start from; ``mask``: an (H, W) mask to start from as it is (the
    mask on screen, e.g. a propagated slice's: the clicks correct it). ``mode``:
    ``local`` (the product's rule, ``casam.correct``) or ``points`` (every click a SAM point
    prompt, with the previous logits as ``mask_input`` when ``use_logits``).
    """

    def __init__(
        self,
        predictor,
        image: np.ndarray,
        box: np.ndarray | None = None,
        task: str | None = "auto",
        mask_input: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        mode: str = "local",
        settings: ClickSettings | None = None,
        use_logits: bool = False,
    ):
        if mode not in ("local", "points"):
            raise ValueError(f"mode must be 'local' or 'points', got {mode!r}")
        self.predictor, self.mode, self.use_logits = predictor, mode, use_logits
        self.settings = settings or ClickSettings()
        self.embedding = predictor.embed(image)
        name, self.route = predictor.resolve_task(self.embedding, task)
        self.task = name or "sam"
        self.box = None if box is None else np.asarray(box, dtype=float).reshape(1, 4)
        self.clicks: list[Click] = []
        start = start_state(predictor, self.embedding, self.box, self.task, mask_input, mask)
        self._history: list[State | None] = [start]
        self.decodes = 0
        """Decoder calls of the last click (the latency of a click is about this many decodes)."""

    @property
    def state(self) -> State | None:
        """The object's current mask, logits and SAM estimate (None before the first prompt)."""
        return self._history[-1]

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.state is None else self.state.mask

    def _points(self) -> State:
        prev = self.state
        pred = self.predictor.sam_prompts(
            self.embedding,
            self.box,
            self.task,
            points=[(c.x, c.y) for c in self.clicks],
            labels=[int(c.positive) for c in self.clicks],
            mask_input=prev.logits if self.use_logits and prev is not None else None,
        )
        return State(pred.masks[0], pred.logits[0], float(pred.scores[0]), 1)

    def add(self, x: float, y: float, positive: bool = True) -> State:
        """Add a click and correct the mask; returns the new State (the session is unchanged
        when the click is refused)."""
        from casam.prompts import check_points

        h, w = self.image_shape
        check_points([(x, y)], [int(bool(positive))], h, w)
        self.clicks.append(Click(float(x), float(y), bool(positive)))
        try:
            if self.mode == "points":
                new = self._points()
            else:
                e, s = self.embedding, self.settings
                new = step(self.predictor, e, self.task, self.state, x, y, bool(positive), s)
        except InputError:
            self.clicks.pop()
            raise
        before = 0 if self.state is None else self.state.decodes
        self.decodes = new.decodes - before if self.mode == "local" else new.decodes
        self._history.append(new)
        return new

    @property
    def image_shape(self) -> tuple[int, int]:
        g = self.embedding.geometry
        return g.height, g.width

    def undo(self) -> State | None:
        """Remove the last click; returns the State before it (None if no object was left)."""
        if not self.clicks:
            raise InputError("no click to undo on this object")
        self.clicks.pop()
        self._history.pop()
        return self.state
