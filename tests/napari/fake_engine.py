"""A fake engine for the dock model's tests: same job signatures as ``Session``, no model.

A box's mask is the box itself (filled), so the expected labels are known exactly; routing
returns whatever the test put in ``route_for``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from casam.progress import Progress
from casam.routing import RouteDecision
from napari_casam._jobs import relay
from napari_casam._session import Routed, Segmented


def FakeRoute(task, score, threshold, fallback, forced=False, best=None, **kw) -> RouteDecision:  # noqa: N802
    """A routing decision as the engine makes it (the real, torch-free value class); ``kw``:
    ``runner_up``, ``runner_up_ratio``, ``router``."""
    return RouteDecision(task, score, threshold, fallback, forced=forced, best=best, **kw)


def box_mask(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m = np.zeros(shape, bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


@dataclass
class FakeSession:
    predictor: Any = "loaded"
    names: list[str] = field(default_factory=list)
    route_for: dict = field(default_factory=dict)
    """plane index -> decision returned by job_route / job_segment."""
    calls: list[tuple] = field(default_factory=list)
    verified: Any = None
    learn_events: int = 5
    scores: dict = field(default_factory=dict)
    """box number -> SAM IoU estimate (default 0.9)."""
    saved: list[str] = field(default_factory=list)
    cached: set = field(default_factory=set)
    """Plane indices embedded so far (routing with compute, boxes, prefetching)."""
    kinds: dict = field(default_factory=dict)
    """task name -> adapter kind (default alignment), as ``active_tasks`` lists them."""
    learn_settings: list = field(default_factory=list)
    """The ``LearnSettings`` of every job_learn call."""

    def task_names(self) -> list[str]:
        return list(self.names)

    def active_tasks(self) -> list[FakeInfo]:
        return [FakeInfo(n, adapter=self.kinds.get(n, "alignment")) for n in self.names]

    def job_route(self, image, index, compute):
        self.calls.append(("route", index))
        yield "Computing the image embedding…"
        if compute:
            self.cached.add(index)
        decision = self.route_for.get(index)
        if isinstance(decision, Exception):
            raise decision
        return Routed(index, decision)

    def job_segment(self, image, index, boxes, task="auto", tags=()):
        self.calls.append(("segment", index, len(boxes), task))
        self.cached.add(index)
        yield "Segmenting…"
        masks = np.stack([box_mask(image.shape[:2], b) for b in boxes])
        routed = self.route_for.get(index)
        route = routed if task == "auto" else FakeRoute(None, np.nan, None, True, forced=True)
        scores = np.array([self.scores.get(i, 0.9) for i in range(len(boxes))])
        return Segmented(
            index, masks, scores, route, None, 0.0, 0.01, list(tags), routed, np.asarray(boxes)
        )

    def job_prefetch(self, get_plane, index):
        get_plane(index)
        if index in self.cached:
            return False
        yield index
        self.calls.append(("prefetch", index))
        self.cached.add(index)
        return True

    def job_prepare(self, get_plane, indices, cancel):
        for k, ix in enumerate(indices):
            if cancel.is_set():
                break
            get_plane(ix)
            yield k + 1, len(indices)
        return len(indices)

    def job_interpolate(self, get_plane, items, task, cancel):
        out = []
        for k, (ix, box) in enumerate(items):
            out.append((ix, box_mask(get_plane(ix).shape[:2], box)))
            yield k + 1, len(items)
        return out

    def job_learn(self, images, masks, name, settings, overwrite, extend, cancel, names=None):
        from casam.errors import Cancelled

        self.calls.append(("learn", len(images), list(names or []), overwrite, extend))
        self.learn_settings.append(settings)
        try:
            return (yield from relay(self._train(name, settings), cancel.is_set))
        except Cancelled:
            return None

    def _train(self, name, settings):
        yield FakeProgress("plan", 1, 1, message="about 9 s on this machine")
        for epoch in range(1, self.learn_events + 1):
            yield FakeProgress("align", epoch, self.learn_events, epoch, 0.5 / epoch)
        kind, extra = self.kinds.get(name, settings.adapter), {}
        if kind == "auto":  # as the engine does when the Alignment Layer gains little
            for epoch in range(1, self.learn_events + 1):
                yield FakeProgress("second", epoch, self.learn_events, epoch, 0.4 / epoch)
            kind, extra = "decoder", {"kind_iou": {"alignment": 0.512, "decoder": 0.9}}
        self.saved.append(name)
        return FakeInfo(name, adapter=kind, settings=extra)


FakeProgress = Progress  # the engine's own event (casam.progress imports no torch)


@dataclass
class FakeInfo:
    name: str
    n_images: int = 3
    n_objects: int = 3
    iou_sam: float | None = 0.5
    iou_task: float | None = 0.9
    n_holdout: int = 1
    adapter: str = "alignment"
    settings: dict = field(default_factory=dict)


class FakeLayers:
    """The model's Layers protocol over plain napari layers (no viewer)."""

    def __init__(self, image, masks, prompts) -> None:
        self.layers = {"image": image, "masks": masks, "prompts": prompts}
        self.index: tuple[int, ...] = ()

    def image(self, token):
        return self.layers["image"] if token == "img" else None

    def masks(self, image):
        return self.layers["masks"] if image is not None else None

    def prompts(self, image):
        return self.layers["prompts"] if image is not None else None

    def ensure_masks(self, image):
        return self.layers["masks"]

    def current_index(self, image):
        return self.index

    def show_plane(self, image, index):
        self.index = tuple(index)

    def token(self, image):
        return "img"
