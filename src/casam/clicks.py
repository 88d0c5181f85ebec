"""Correcting a mask with clicks: a box plus positive/negative points on one slice, with undo.

:class:`ClickSession` is the state of one object on one slice (the dock keeps one per object and
slice; the benchmark drives one with simulated clicks). Each click re-predicts from the box, all
clicks so far and, when ``use_logits``, the previous low-res logits as SAM's ``mask_input``.
:func:`next_click` is the standard simulated user of interactive-segmentation papers: the next
click goes to the centre (the pixel farthest from its edge) of the largest error region, positive
on missed foreground, negative on a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from casam.errors import InputError

#: Feed the previous logits back with each click (docs/benchmark-interactive.md decides).
USE_LOGITS = False
#: Pixels a box edit leaves between a click and the box's side.
EDIT_PAD = 2.0


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


def edit_box(box: np.ndarray | None, clicks: list[Click], height: int, width: int) -> np.ndarray:
    """Clicks as box edits, for a model that only understands boxes (plain LiteMedSAM was
    trained on boxes only and ignores or misreads points): a positive click outside the box
    widens it to reach the click, a negative click inside moves the nearest side past it.
    Returns (1, 4) XYXY."""
    pos = [c for c in clicks if c.positive]
    if box is None:
        if not pos:
            raise InputError(
                "only negative clicks and no object yet: draw a box or click the object"
            )
        b = np.array([pos[0].x, pos[0].y, pos[0].x + 1, pos[0].y + 1]) + [-8, -8, 8, 8]
    else:
        b = np.asarray(box, dtype=float).reshape(4).copy()
    for c in clicks:
        inside = b[0] <= c.x < b[2] and b[1] <= c.y < b[3]
        if c.positive and not inside:
            b[:2] = np.minimum(b[:2], [c.x - EDIT_PAD, c.y - EDIT_PAD])
            b[2:] = np.maximum(b[2:], [c.x + 1 + EDIT_PAD, c.y + 1 + EDIT_PAD])
        elif not c.positive and inside:
            gaps = [c.x - b[0], c.y - b[1], b[2] - c.x, b[3] - c.y]
            side = int(np.argmin(gaps))
            b[side] = (c.x, c.y, c.x, c.y)[side] + (1 if side < 2 else 0)
            if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                raise InputError("that negative click leaves no box: undo it or click elsewhere")
    return np.clip(b, 0, [width, height, width, height])[None]


class ClickSession:
    """A box and clicks on one object of one 2-D image, with undo (one predictor call a click).

    ``predictor``: a :class:`casam.predictor.Predictor` (or anything with its ``embed`` and
    ``predict_embedding``); ``box``: XYXY original pixels or None (clicks only); ``mask_input``:
    logits to start from (e.g. the slice's propagated result). ``mode``: ``points`` sends the
    clicks to SAM as point prompts; ``box`` turns them into box edits (:func:`edit_box`);
    ``auto``: points for a task learned with point prompts, box edits for plain SAM and tasks
    learned from boxes only.
    """

    def __init__(
        self,
        predictor,
        image: np.ndarray,
        box: np.ndarray | None = None,
        task: str | None = "auto",
        use_logits: bool = USE_LOGITS,
        mask_input: np.ndarray | None = None,
        mode: str = "auto",
    ):
        self.predictor, self.task, self.use_logits = predictor, task, use_logits
        self.embedding = predictor.embed(image)
        self.image_shape = np.asarray(image).shape[:2]
        self.mode = mode if mode != "auto" else _click_mode(predictor, self.embedding, task)
        self.box = None if box is None else np.asarray(box, dtype=float).reshape(1, 4)
        self.clicks: list[Click] = []
        self._start_logits = mask_input
        self._history: list = []
        if self.box is not None:
            self._history.append(self._predict(mask_input))

    @property
    def prediction(self):
        """The latest Prediction (None before the first prompt)."""
        return self._history[-1] if self._history else None

    @property
    def mask(self) -> np.ndarray | None:
        p = self.prediction
        return None if p is None else p.masks[0]

    def _predict(self, logits: np.ndarray | None):
        box, pts, labels = self.box, None, None
        if self.mode == "box" and self.clicks:
            h, w = np.asarray(self.image_shape)
            box = edit_box(self.box, self.clicks, int(h), int(w))
        elif self.clicks:
            pts = [(c.x, c.y) for c in self.clicks]
            labels = [int(c.positive) for c in self.clicks]
        return self.predictor.predict_embedding(
            self.embedding,
            box,
            self.task,
            points=pts,
            labels=labels,
            mask_input=logits if self.use_logits else None,
        )

    def add(self, x: float, y: float, positive: bool = True):
        """Add a click and re-predict; returns the new Prediction (the session is unchanged
        when the click is refused)."""
        self.clicks.append(Click(float(x), float(y), bool(positive)))
        prev = self.prediction
        logits = prev.logits[0] if prev is not None else self._start_logits
        try:
            pred = self._predict(logits)
        except InputError:
            self.clicks.pop()
            raise
        self._history.append(pred)
        return pred

    def undo(self):
        """Remove the last click; returns the Prediction before it (None if none was left)."""
        if not self.clicks:
            raise InputError("no click to undo on this object")
        self.clicks.pop()
        self._history.pop()
        return self.prediction


def _click_mode(predictor, embedding, task: str | None) -> str:
    """``points`` when the task the image goes to was learned with point prompts, else ``box``."""
    if not hasattr(predictor, "resolve_task"):
        return "points"
    name, _ = predictor.resolve_task(embedding, task)
    info = predictor.task_infos.get(name) if name else None
    return "points" if info is not None and info.settings.get("point_share", 0) > 0 else "box"
