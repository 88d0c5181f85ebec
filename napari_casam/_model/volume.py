"""Qt-free dock actions for interactive 3-D: segment through the volume, correct with clicks.

- *Segment through volume*: from the selected object's mask on the slice in view (or, if it has
  none there, the last box drawn on that slice) the object is propagated through the volume in
  the background (progress, Cancel) and written as ONE undo step, never over other labels and
  never on slices corrected by hand (clicked). After a correction, propagating again from that
  slice updates the other slices.
- *Clicks*: a click adds a positive point (a negative one while ``negative`` is on) to the
  selected object on the slice in view; its mask on that slice updates from box + clicks (one
  undo step each); ``undo_click`` removes the last click and its edit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from functools import partial
from typing import Any

import numpy as np

from napari_casam._jobs import Job
from napari_casam._layers import Index, n_leading, plane, rectangle_to_box, spatial_shape
from napari_casam._volume_edit import propagation_edit, slice_edit


def job_propagate(
    session: Any,
    volume: np.ndarray,
    k: int,
    prompt: dict[str, Any],
    task: str,
    locked: Sequence[int],
    cancel: threading.Event,
) -> Generator[tuple[int, int], None, Any]:
    """Run :func:`casam.propagate.iter_propagate` for the dock; yields (done, total)."""
    from casam.errors import Cancelled
    from casam.propagate import iter_propagate

    p = session.predictor or session._ensure()
    gen = iter_propagate(p, np.asarray(volume), k, task=task, locked=locked, **prompt)
    try:
        while True:
            if cancel.is_set():
                raise Cancelled("propagation cancelled; the masks were not changed")
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            yield ev.step, ev.total
    finally:
        gen.close()


def job_click(session: Any, image: np.ndarray, state: dict, key: tuple, click: tuple, task: str):
    """Add one click to the object's ClickSession (made on first use from ``click[3]``, its
    start: ``{"mask": ...}`` the mask on screen or ``{"box": ...}``); returns its mask."""
    from casam.clicks import ClickSession

    yield "Updating the mask…"
    p = session.predictor or session._ensure()
    if key not in state:
        state[key] = ClickSession(p, image, task=task, **click[3])
    state[key].add(*click[:3])
    return state[key].mask


class VolumeTools:
    """Propagation and clicks on the dock's current image (see module doc)."""

    def __init__(self, dock: Any) -> None:
        self.dock = dock
        self.negative = False
        self.edited: dict[int, set[int]] = {}
        """Slices of each label corrected by hand (clicks): propagation never changes them."""
        self._clicks: dict[tuple, Any] = {}
        self._order: list[tuple] = []

    def _target(self) -> tuple[Any, Any, Index, int] | None:
        d = self.dock
        image = d.image
        if image is None or n_leading(image.data.shape, image.rgb) != 1:
            d.notify("info", "Segment through volume needs a 3-D image (Z, Y, X).")
            return None
        masks = d.layers.ensure_masks(image)
        return image, masks, d.current_index(image), int(masks.selected_label)

    def _last_box(self, image: Any, index: Index, label: int = 0) -> np.ndarray | None:
        """The last box drawn on plane ``index`` (of object ``label`` when it is > 0)."""
        prompts = self.dock.layers.prompts(image)
        if prompts is None or not len(prompts.data):
            return None
        hw = spatial_shape(image.data.shape, image.rgb)[-2:]
        labels = prompts.features["label"].to_numpy()
        mine = [
            b
            for (ix, b), lb in zip(
                (rectangle_to_box(v, hw) for v in prompts.data), labels, strict=True
            )
            if ix == index and b is not None and (label <= 0 or lb == label)
        ]
        return np.asarray(mine[-1], dtype=float) if mine else None

    def propagate(self) -> bool:
        """Start propagating the selected object from the slice in view."""
        t = self._target()
        if t is None:
            return False
        image, masks, index, label = t
        current = plane(masks.data, index)
        own_box = self._last_box(image, index, label) if label > 0 else None
        clicked = index[0] in self.edited.get(label, set())
        if own_box is not None and not clicked:
            prompt = {"box": own_box}  # SAM's box answer: the seed margins carry to neighbours
        elif label > 0 and (current == label).any():
            prompt = {"mask": current == label}
        else:
            box = self._last_box(image, index)
            if box is None:
                self.dock.notify("info", "Draw a box around the structure on this slice first.")
                return False
            prompt = {"box": box}
            label = label if label > 0 and not (masks.data == label).any() else 0
        locked = sorted(self.edited.get(label, set()) - {index[0]})
        done = partial(self._on_propagated, self.dock.token, label, time.perf_counter())
        self.dock._per_slice(
            partial(job_propagate, self.dock.session),
            (image.data, index[0], prompt, self.dock.override, locked),
            "propagate",
            "Propagating slice",
            done,
        )
        return True

    def _on_propagated(self, tok: str, label: int, t0: float, result: Any) -> None:
        from napari_casam._layers import next_label

        image = self.dock.layers.image(tok)
        masks = self.dock.layers.masks(image) if image is not None else None
        if masks is None:
            return
        value = label or next_label(masks.data)
        locked = self.edited.get(value, set())
        paint, erase = propagation_edit(masks.data, result.masks, value, result.indices, locked)
        with masks.block_history():
            masks.data_setitem(paint, value)
            if erase[0].size:
                masks.data_setitem(erase, 0)
        masks.selected_label = value
        lo, hi = result.indices[0], result.indices[-1]
        self.dock.set_status(
            f"Label {value} through slices {lo}..{hi} ({len(result.indices)} slices) in "
            f"{time.perf_counter() - t0:.1f} s (one undo step)."
        )

    def click(self, x: float, y: float, index: Index | None = None) -> bool:
        """A click on the selected object at XY (pixels) of plane ``index`` (default: in view)."""
        t = self._target()
        if t is None:
            return False
        image, masks, here, label = t
        index = here if index is None else index
        current = plane(masks.data, index)
        if label <= 0 or not (current == label).any():
            if self.negative:
                self.dock.notify("info", "A negative click needs an object: draw a box first.")
                return False
            if label <= 0:
                from napari_casam._layers import next_label

                label = next_label(masks.data)
                masks.selected_label = label
        key = (self.dock.token, label, index)
        start: dict = {}  # the clicks correct the mask on screen (else the last box's mask)
        if key not in self._clicks:
            mine = current == label
            start = {"mask": mine} if mine.any() else {"box": self._last_box(image, index)}
        click = (x, y, not self.negative, start)
        job = Job(
            partial(job_click, self.dock.session),
            (plane(image.data, index), self._clicks, key, click, self.dock.override),
            key="click",
            yielded=self.dock.on_job_text,
            returned=partial(self._on_clicked, key, label),
            errored=self.dock.on_job_error,
        )
        self.dock.jobs.submit(job)
        return True

    def _on_clicked(self, key: tuple, label: int, mask: np.ndarray) -> None:
        image = self.dock.layers.image(key[0])
        masks = self.dock.layers.masks(image) if image is not None else None
        if masks is None:
            return
        index = key[2]
        paint, erase = slice_edit(plane(masks.data, index), mask, label, lead=index)
        with masks.block_history():
            masks.data_setitem(paint, label)
            if erase[0].size:
                masks.data_setitem(erase, 0)
        self.edited.setdefault(label, set()).add(int(index[0]))
        self._order.append(key)
        self.dock.set_status(f"Click on label {label}, slice {index[0]}: mask updated.")

    def undo_click(self) -> bool:
        """Remove the last click and its edit of the mask."""
        if not self._order:
            return False
        key = self._order.pop()
        session = self._clicks[key]
        session.undo()
        if not session.clicks:
            self._clicks.pop(key)
            self.edited.get(key[1], set()).discard(int(key[2][0]))
        image = self.dock.layers.image(key[0])
        masks = self.dock.layers.masks(image) if image is not None else None
        if masks is not None:
            masks.undo()
        return True
