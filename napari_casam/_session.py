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
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from casam.errors import Cancelled
from napari_casam._jobs import relay
from napari_casam._layers import Index

if TYPE_CHECKING:
    from casam import LearnSettings, Predictor, RouteDecision, TaskInfo, TaskLibrary

BUNDLED_BACKBONE = "litemedsam"


def backbone_titles() -> dict[str, str]:
    """Backbone name -> title, from the engine's registry (imports torch)."""
    from casam.backbones import BACKBONES

    return {
        name: spec.title if not spec.needs_checkpoint else f"{spec.title} (checkpoint file)"
        for name, spec in BACKBONES.items()
    }


def backbone_title(name: str) -> str:
    return backbone_titles().get(name, name)


def needs_checkpoint(backbone: str) -> bool:
    """Whether ``backbone`` needs a checkpoint file (the engine's registry says)."""
    from casam.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    return spec is None or spec.needs_checkpoint


def available_devices() -> list[str]:
    """Devices torch can use here, "auto" first (the engine's registry answers; imports torch)."""
    from casam.backbones import available_devices as engine_devices

    return list(engine_devices())


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
    image_route: RouteDecision | None = None
    """The router's own decision for the plane (``route`` is the forced one on an override)."""
    boxes: np.ndarray | None = None
    """(N, 4) XYXY boxes the masks answer, in plane pixels."""


@dataclass
class Routed:
    index: Index
    route: RouteDecision | None
    """None when the plane is not embedded yet and computing was not asked for."""


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
        self.verified: tuple[list[str], list[str]] | None = None
        """(names routing uses, problem lines) of the loaded predictor's library."""

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
            self.verified = None
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

    def library_rows(self) -> list[tuple[TaskInfo, str | None]]:
        """Tasks of the active backbone, each with why routing refuses it (None: it is used).

        Once the model is loaded, "used" is what the predictor's verified read of the library
        (``TaskLibrary.scan``) kept, recorded by the worker that loaded or reloaded it.
        """
        tasks = self.active_tasks()
        if self.verified is None:
            return [(t, None) for t in tasks]
        used, problems = set(self.verified[0]), self.verified[1]
        out: list[tuple[TaskInfo, str | None]] = []
        for t in tasks:
            why = None
            if t.name not in used:
                quoted = f"'{t.name}'"
                why = next((x for x in problems if quoted in x), "it did not pass verification")
            out.append((t, why))
        return out

    def _record_verified(self, p: Predictor) -> None:
        self.verified = (list(p.task_names), list(getattr(p, "problems", [])))

    def task_names(self) -> list[str]:
        if self.predictor is not None:
            return list(self.predictor.task_names)
        return [t.name for t in self.active_tasks()]

    # ---- jobs -----------------------------------------------------------------------------
    def job_load(self) -> Generator[str, None, tuple[Predictor, list[str]]]:
        """Build the predictor (imports torch, loads weights): seconds on a CPU."""
        yield f"Loading {backbone_title(self.backbone)}…"
        p = self._ensure()
        runtime = getattr(p.backbone, "runtime", None)
        if runtime is not None:
            yield "Preparing the image encoder (the first time: an export of about a minute)…"
            runtime.prepare()
        decoder = getattr(p.backbone, "box_decoder", None)
        if decoder is not None:
            yield "Preparing the box decoder (the first time: a compile of about 10 s)…"
            decoder.prepare()
        return p, available_devices()

    def _ensure(self) -> Predictor:
        with self._lock:
            if self.predictor is None:
                from casam._native import import_torch

                import_torch()  # in a worker: its libraries load without stopping the GUI
                from casam import Predictor
                from casam.runtime import build_in_child

                build_in_child()  # a first export holds the GIL for seconds: not in this process
                from casam.config import default_cache_dir

                self.predictor = Predictor(
                    backbone=self.backbone,
                    checkpoint=self.checkpoint or None,
                    device=self.device,
                    library=self.library,
                    disk_cache=default_cache_dir() if self.disk_cache else None,
                )
                self._record_verified(self.predictor)
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
        image_route = p.set_image(image)
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
            image_route=image_route,
            boxes=np.asarray(boxes, dtype=float).reshape(-1, 4),
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
        computed = [0]
        yield 0, n

        def planes() -> Iterator[np.ndarray]:
            for ix in indices:
                if cancel.is_set():
                    return
                img = get_plane(ix)
                computed[0] += not p.is_cached(img)
                yield img

        for k, _ in p.iter_embed(planes()):  # batched: several slices per encoder call
            yield k + 1, n
        return computed[0]

    def job_prefetch(
        self, get_plane: Callable[[Index], np.ndarray], index: Index
    ) -> Generator[Index, None, bool]:
        """Embed one plane ahead of the user (a background job); True when the encoder ran.

        Never loads the model: until it is loaded there is nothing to prefetch with.
        """
        p = self.predictor
        if p is None:
            return False
        image = get_plane(index)
        if p.is_cached(image):
            return False
        yield index  # a cancelled prefetch stops here, before the encoder
        p.embed(image)
        return True

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
                raise Cancelled("interpolation cancelled")
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
            self._record_verified(self.predictor)
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
        image_names: list[str] | None = None,
    ) -> Generator[Any, None, TaskInfo | None]:
        """Train a task; yields the engine's ``Progress``; None when cancelled (nothing saved).

        ``image_names`` (file names and slices, or layer names and planes) name the images
        in the engine's messages, as ``casam learn`` names its files.

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
            image_names=image_names,
            estimate=True,
        )
        try:
            return (yield from relay(gen, cancel.is_set))
        except Cancelled:
            return None
