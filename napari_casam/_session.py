"""The engine side of one dock: the predictor, the task library and the jobs run on them.

No Qt here. Every ``job_*`` method is a generator function run by a worker
(:mod:`napari_casam._workers`); it yields progress and returns its result. Jobs that touch
the predictor's state run one at a time through the widget's ``JobQueue``; training runs in
its own worker and only calls the predictor's thread-safe ``embed``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_casam._layers import Index

if TYPE_CHECKING:
    from casam import LearnSettings, Predictor, RouteDecision, TaskInfo, TaskLibrary

BUNDLED_BACKBONE = "litemedsam"

#: Backbone name -> label shown in the dock (the engine's registry has the same names).
BACKBONE_TITLES: dict[str, str] = {
    "litemedsam": "LiteMedSAM (bundled)",
    "sam_vit_b": "SAM ViT-B (checkpoint file)",
    "sam_vit_l": "SAM ViT-L (checkpoint file)",
    "sam_vit_h": "SAM ViT-H (checkpoint file)",
    "medsam_vit_b": "MedSAM ViT-B (checkpoint file)",
}


def guard_triton() -> None:
    """Keep torch from importing triton inside napari (opt out: ``CASAM_ALLOW_TRITON=1``).

    triton bundles its own LLVM; loading it after Mesa's OpenGL driver (llvmpipe under Xvfb,
    radeonsi, ...) has loaded the system LLVM crashes the process (segfault while importing
    ``libtriton``, reached through ``torchvision -> torch._dynamo``). The plugin never compiles
    with triton, and torch treats a blocked import as "triton not installed".
    """
    if "triton" in sys.modules or os.environ.get("CASAM_ALLOW_TRITON", "") not in ("", "0"):
        return
    sys.modules["triton"] = None  # type: ignore[assignment]


def needs_checkpoint(backbone: str) -> bool:
    return backbone != BUNDLED_BACKBONE


def available_devices() -> list[str]:
    """Devices torch can use here, "auto" first (imports torch)."""
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


@dataclass
class Segmented:
    """Result of one segmentation job (masks of the boxes drawn on one plane)."""

    index: Index
    masks: np.ndarray
    """(N, H, W) bool, one per box."""
    scores: np.ndarray
    route: RouteDecision | None
    task: str | None
    """Task whose Alignment Layer was used (None: plain SAM)."""
    embed_seconds: float
    seconds: float
    tags: list[Any] = field(default_factory=list)
    """Whatever the caller attached to the boxes (shape rows), in box order."""


@dataclass
class Routed:
    index: Index
    route: RouteDecision | None
    """None when the plane is not embedded yet and computing was not asked for."""


class Cancelled(Exception):
    """Internal: a job saw its cancel flag."""


class Session:
    """Owns the :class:`casam.Predictor` and :class:`casam.TaskLibrary` of one dock."""

    def __init__(
        self,
        backbone: str = BUNDLED_BACKBONE,
        checkpoint: str = "",
        device: str = "auto",
        library_dir: str = "",
        disk_cache: bool = False,
    ) -> None:
        self.disk_cache = disk_cache
        self.backbone = backbone
        self.checkpoint = checkpoint
        self.device = device
        self.library_dir = library_dir
        self.predictor: Predictor | None = None
        self._library: TaskLibrary | None = None
        self._lock = threading.Lock()

    # ---- configuration --------------------------------------------------------------------
    def configure(
        self, backbone: str, checkpoint: str, device: str, library_dir: str, disk_cache: bool
    ) -> bool:
        """Change the model, library or cache; drops the loaded predictor if anything changed."""
        new = (
            backbone,
            checkpoint if needs_checkpoint(backbone) else "",
            device,
            library_dir,
            disk_cache,
        )
        old = (self.backbone, self.checkpoint, self.device, self.library_dir, self.disk_cache)
        if new == old:
            return False
        self.backbone, self.checkpoint, self.device, self.library_dir, self.disk_cache = new
        with self._lock:
            self.predictor = None
            self._library = None
        return True

    @property
    def library_path(self) -> Path:
        if self.library_dir:
            return Path(self.library_dir).expanduser()
        from casam.config import default_library_dir

        return default_library_dir()

    @property
    def library(self) -> TaskLibrary:
        if self._library is None:
            from casam import TaskLibrary

            self._library = TaskLibrary(self.library_path)
        return self._library

    @property
    def identity(self) -> str | None:
        """Identity (``name:digest``) of the loaded backbone, None before loading."""
        p = self.predictor
        return p.backbone.identity if p is not None else None

    def active_tasks(self) -> list[TaskInfo]:
        """Tasks of the active backbone (by identity once loaded, by name before)."""
        ident = self.identity
        out = []
        for t in self.library.tasks():
            if ident is not None:
                ok = t.backbone == ident
            else:
                ok = str(t.backbone).split(":")[0] == self.backbone
            if ok:
                out.append(t)
        return sorted(out, key=lambda t: t.name.lower())

    def task_names(self) -> list[str]:
        if self.predictor is not None:
            return list(self.predictor.task_names)
        return [t.name for t in self.active_tasks()]

    # ---- jobs -----------------------------------------------------------------------------
    def job_load(self) -> Generator[str, None, tuple[Predictor, list[str]]]:
        """Build the predictor (imports torch, loads weights): seconds on a CPU."""
        yield f"Loading {BACKBONE_TITLES.get(self.backbone, self.backbone)}…"
        return self._ensure(), available_devices()

    def _ensure(self) -> Predictor:
        with self._lock:
            if self.predictor is None:
                from casam import Predictor
                from casam.config import default_cache_dir

                self.predictor = Predictor(
                    backbone=self.backbone,
                    checkpoint=self.checkpoint or None,
                    device=self.device,
                    library=self.library,
                    disk_cache=default_cache_dir() if self.disk_cache else None,
                )
            return self.predictor

    def job_route(
        self, image: np.ndarray, index: Index, compute: bool
    ) -> Generator[str, None, Routed]:
        """Route one plane; embed it first only if ``compute`` (else None when not cached)."""
        p = self.predictor
        if p is None:
            yield "Loading the model…"
            p = self._ensure()
        if not p.is_cached(image):
            if not compute:
                return Routed(index, None)
            yield "Computing the image embedding…"
        return Routed(index, p.set_image(image))

    def job_segment(
        self,
        image: np.ndarray,
        index: Index,
        boxes: np.ndarray,
        task: str = "auto",
        tags: Sequence[Any] = (),
    ) -> Generator[str, None, Segmented]:
        """Segment ``boxes`` (N, 4) XYXY on one 2-D ``image``."""
        t0 = time.perf_counter()
        p = self.predictor
        if p is None:
            yield "Loading the model…"
            p = self._ensure()
        if not p.is_cached(image):
            yield "Computing the image embedding…"
        p.set_image(image)
        t1 = time.perf_counter()
        yield "Segmenting…"
        pred = p.predict(np.asarray(boxes, dtype=float).reshape(-1, 4), task=task)
        return Segmented(
            index=index,
            masks=np.asarray(pred.masks, dtype=bool),
            scores=np.asarray(pred.scores, dtype=float),
            route=pred.route,
            task=pred.task,
            embed_seconds=t1 - t0,
            seconds=time.perf_counter() - t0,
            tags=list(tags),
        )

    def job_prepare(
        self,
        get_plane: Callable[[Index], np.ndarray],
        indices: Sequence[Index],
        cancel: threading.Event,
    ) -> Generator[tuple[int, int], None, int]:
        """Embed every plane of ``indices`` not cached yet; yields (done, total)."""
        p = self.predictor or self._ensure()
        n = len(indices)
        computed = 0
        yield 0, n
        for k, ix in enumerate(indices):
            if cancel.is_set():
                break
            img = get_plane(ix)
            if not p.is_cached(img):
                p.embed(img)
                computed += 1
            yield k + 1, n
        return computed

    def job_interpolate(
        self,
        get_plane: Callable[[Index], np.ndarray],
        items: Sequence[tuple[Index, np.ndarray]],
        task: str,
        cancel: threading.Event,
    ) -> Generator[tuple[int, int], None, list[tuple[Index, np.ndarray]]]:
        """Segment one box per plane; returns ``[(index, mask (H, W) bool), ...]``."""
        p = self.predictor or self._ensure()
        out: list[tuple[Index, np.ndarray]] = []
        n = len(items)
        yield 0, n
        for k, (ix, box) in enumerate(items):
            if cancel.is_set():
                raise Cancelled
            p.set_image(get_plane(ix))
            pred = p.predict(np.asarray(box, dtype=float).reshape(1, 4), task=task)
            out.append((ix, np.asarray(pred.masks[0], dtype=bool)))
            yield k + 1, n
        return out

    def job_reload(self) -> Generator[str, None, list[str]]:
        """Re-read the library after a change (learn, rename, delete, import)."""
        yield "Reloading the task library…"
        if self.predictor is not None:
            self.predictor.reload_library()
            return list(self.predictor.task_names)
        return self.task_names()

    def job_learn(
        self,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        name: str,
        settings: LearnSettings | None,
        overwrite: bool,
        extend: bool,
        cancel: threading.Event,
    ) -> Generator[Any, None, TaskInfo | None]:
        """Train a task; yields the engine's ``Progress``; None when cancelled (nothing saved).

        The engine's generator is closed in this thread as soon as the cancel flag is seen,
        which is between two of its yields.
        """
        from casam import LearnSettings, iter_learn_task

        p = self.predictor
        if p is None:
            yield "Loading the model…"
            p = self._ensure()
        gen = iter_learn_task(
            images,
            masks,
            name=name,
            library=self.library,
            predictor=p,
            settings=settings or LearnSettings(),
            overwrite=overwrite,
            extend=extend,
        )
        try:
            while True:
                if cancel.is_set():
                    return None
                try:
                    progress = next(gen)
                except StopIteration as stop:
                    return stop.value
                yield progress
        finally:
            gen.close()
