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
    """A box and clicks on one object of one 2-D image, with undo (one predictor call a click).

    ``predictor``: a :class:`casam.predictor.Predictor` (or anything with its ``embed`` and
    ``predict_embedding``); ``box``: XYXY original pixels or None (clicks only); ``mask_input``:
    logits to start from (e.g. the slice's propagated result).
    """

    def __init__(
        self,
        predictor,
        image: np.ndarray,
        box: np.ndarray | None = None,
        task: str | None = "auto",
        use_logits: bool = USE_LOGITS,
        mask_input: np.ndarray | None = None,
    ):
        self.predictor, self.task, self.use_logits = predictor, task, use_logits
        self.embedding = predictor.embed(image)
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
        pts = [(c.x, c.y) for c in self.clicks] or None
        labels = [int(c.positive) for c in self.clicks] or None
        return self.predictor.predict_embedding(
            self.embedding,
            self.box,
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
