"""Learning a task as Qt-free state: checks before starting, progress, cancel, outcome.

A task is learned from (image, Labels layer) pairs of open layers (several patients at once),
or from image and mask files read in the worker by ``casam.io`` exactly as ``casam learn``
reads them; both run the same training job of the session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_casam import _jobs, _texts
from napari_casam._layers import spatial_shape, training_pairs

if TYPE_CHECKING:
    from napari_casam._session import Session


_STARTING = object()

#: How the file lists are named in messages (the CLI says ``--images`` / ``--masks``).
FILE_FIELDS = ("Images", "Masks")


def layer_pairs(
    pairs: list[tuple[Any, Any]],
) -> tuple[list[Any], list[Any], list[str], int]:
    """Training images, masks and names of every labelled plane of checked (image, labels)
    pairs, and how many planes without labels were skipped."""
    images: list[Any] = []
    masks: list[Any] = []
    names: list[str] = []
    skipped = 0
    for image, labels in pairs:
        imgs, msks, indices = training_pairs(image.data, labels.data, image.rgb)
        shape = spatial_shape(image.data.shape, image.rgb)
        skipped += int(np.prod(shape[:-2], dtype=int)) - len(indices)
        images += imgs
        masks += msks
        names += [image.name + (str(list(ix)) if ix else "") for ix in indices]
    return images, masks, names, skipped


class LearnModel:
    """One training at a time; emits what the learn panel shows."""

    progress = Signal(str, int, int)
    """(text, value, maximum); maximum 0 = busy without a count."""
    state_changed = Signal(bool)
    """True while a training runs (the Learn button is then disabled, Cancel enabled)."""
    message = Signal(str)
    """The result line: started, learned, cancelled or why it failed."""
    learned = Signal(object)
    """A ``casam.TaskInfo`` once the task is in the library."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings_overrides: dict[str, Any] = {}
        """Extra ``LearnSettings`` fields (tests use a tiny schedule)."""
        self.adapter = "auto"
        """What a new or retrained task trains (``casam.config.ADAPTER_CHOICES``: a kind, or
        "auto"); an extended task keeps its own kind (the engine reads it from the task)."""
        self.worker: Any = None
        self.cancelling = False
        self.last_info: Any = None
        self.last_error: str | None = None
        self.files_read: tuple[int, int] | None = None
        """(annotated slices, empty slices skipped) of the last file training."""
        self.epochs: int | None = None
        self.closed = False
        self._stage: str | None = None
        self._kind = "alignment"
        self._stage_t0 = 0.0
        self._stage_step0 = 0
        self._cancel = threading.Event()
        self._t0 = 0.0
        self._started = ""
        from napari_casam._notify import notify

        self.notify = notify

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _task_kind(self, name: str) -> str:
        """The adapter kind of an existing task (an extended task keeps its own)."""
        tasks = getattr(self.session, "active_tasks", lambda: [])()
        return next((t.adapter for t in tasks if t.name == name), "alignment")

    def set_adapter(self, kind: str) -> None:
        """Choose what the next training trains (one of ``casam.config.ADAPTER_CHOICES``)."""
        from casam.config import ADAPTER_CHOICES

        if kind not in ADAPTER_CHOICES:
            raise ValueError(f"unknown adapter kind {kind!r}; one of {', '.join(ADAPTER_CHOICES)}")
        self.adapter = kind

    def check(self, name: str, mode: str, image: Any, labels: Any) -> str | None:
        """Why a training from one image and its Labels layer cannot start (None: it can)."""
        return self.check_request(name, mode) or self.check_pairs([(image, labels)])

    def check_request(self, name: str, mode: str) -> str | None:
        """Why no training of task ``name`` in ``mode`` can start now (None: one can)."""
        if self.running:
            return "A task is already being learned; cancel it first."
        if not name:
            return "Give the new task a name first."
        names = self.session.task_names()
        if mode == "new" and name in names:
            return f"A task named “{name}” exists: choose Retrain or Extend, or another name."
        if mode != "new" and name not in names:
            return f"There is no task “{name}” to retrain or extend."
        return None

    @staticmethod
    def check_pairs(pairs: list[tuple[Any, Any]]) -> str | None:
        """Why these (image layer, Labels layer) pairs cannot be learned from (None: they can)."""
        if not pairs:
            return "Select an image layer to learn from."
        seen: set[int] = set()
        for image, labels in pairs:
            if image is None:
                return "Select an image layer to learn from."
            if labels is None:
                return f"Choose the Labels layer with the corrected masks of “{image.name}”."
            if image.multiscale:
                return (
                    f"“{image.name}” is multiscale, which learning does not support; "
                    "use a single-scale copy."
                )
            if id(image) in seen:
                return f"“{image.name}” is chosen twice; pick each image once."
            seen.add(id(image))
            shape = spatial_shape(image.data.shape, image.rgb)
            if tuple(labels.data.shape) != shape:
                return (
                    f"“{image.name}” is {_texts.shape_text(shape)} but its labels "
                    f"“{labels.name}” are {_texts.shape_text(labels.data.shape)}; choose the "
                    "Labels layer drawn on this image."
                )
        return None

    def start(self, name: str, mode: str, image: Any, labels: Any, epochs: int) -> bool:
        """Start training from one image and its Labels layer (False: refused, said why)."""
        return self.start_layers(name, mode, [(image, labels)], epochs)

    def start_layers(self, name: str, mode: str, pairs: list[tuple[Any, Any]], epochs: int) -> bool:
        """Start training from several (image, Labels layer) pairs, e.g. several patients.

        Every plane with labels is a training image; planes without are skipped.
        """
        problem = self.check_request(name, mode) or self.check_pairs(pairs)
        if problem:
            self.fail(problem)
            return False
        images, masks, names, skipped = layer_pairs(pairs)
        if not images:
            self.fail(_texts.no_labels_yet([labels.name for _, labels in pairs]))
            return False
        text = _texts.learning_from(name, len(images), len(pairs), skipped)
        return self._launch(
            name, mode, epochs, text, self.session.job_learn, images, masks, names=names
        )

    def start_files(
        self, name: str, mode: str, images: list[str], masks: list[str], epochs: int
    ) -> bool:
        """Start training from image and mask files or folders, read as ``casam learn`` reads
        them (in the worker: a bad file ends the job with the CLI's one-line message)."""
        problem = self.check_request(name, mode)
        if problem is None and not images:
            problem = "Choose the image files or folders to learn from."
        if problem is None and not masks:
            problem = "Choose the mask files or folders, one per image file or folder."
        if problem:
            self.fail(problem)
            return False
        text = f"Learning “{name}” from files: reading {_texts.plural(len(images), 'image path')}…"
        paths = ([str(p) for p in images], [str(p) for p in masks])
        self.files_read = None
        return self._launch(name, mode, epochs, text, self._read_then_learn, *paths)

    def _read_then_learn(
        self,
        images: list[str],
        masks: list[str],
        name: str,
        settings: Any,
        overwrite: bool,
        extend: bool,
        cancel: threading.Event,
    ) -> Generator[Any, None, Any]:
        """The file job: the CLI's reading and checks, then the same training job."""
        from casam.io import read_learning_pairs

        yield "Reading the image and mask files…"
        pairs, skipped = read_learning_pairs(
            images, masks, settings.min_images, settings.folds, extend=extend, what=FILE_FIELDS
        )
        self.files_read = (len(pairs), skipped)
        self._started = _texts.learning_from_files(name, len(pairs), skipped)
        yield _texts.files_read(len(pairs), skipped)
        job = self.session.job_learn(
            [x.image for x in pairs],
            [x.mask for x in pairs],
            name,
            settings,
            overwrite,
            extend,
            cancel,
            [x.name for x in pairs],
        )
        return (yield from job)

    def _launch(
        self,
        name: str,
        mode: str,
        epochs: int,
        text: str,
        job: Callable[..., Generator[Any, None, Any]],
        images: Any,
        masks: Any,
        names: Any = None,
    ) -> bool:
        from casam import LearnSettings

        settings = LearnSettings(
            **{"epochs": epochs, "adapter": self.adapter, **self.settings_overrides}
        )
        self.epochs = settings.epochs
        self._kind = self.adapter if mode != "extend" else self._task_kind(name)
        self._cancel = threading.Event()
        self.cancelling = False
        self._t0 = time.perf_counter()
        self._stage = None
        self.last_error = None
        self._started = text
        self.message.emit(text)
        self.progress.emit("Starting…", 0, 0)
        self.worker = _STARTING  # running from here on (a synchronous run ends inside start)
        self.state_changed.emit(True)
        args = [images, masks, name, settings, mode == "replace", mode == "extend", self._cancel]
        worker = _jobs.start(
            job,
            *args,
            *([names] if names is not None else []),
            yielded=self._on_progress,
            returned=self._on_returned,
            errored=self._on_error,
            finished=self._on_finished,
        )
        if self.worker is _STARTING:
            self.worker = worker
        return True

    def close(self) -> None:
        """Cancel a running training and stay silent from now on (the views are going away)."""
        self.cancel()
        self.closed = True

    def cancel(self) -> None:
        """Stop training at the engine's next step; nothing is saved."""
        if not self.running:
            return
        self._cancel.set()
        self.cancelling = True
        self.progress.emit("Cancelling…", 0, 0)

    def _on_progress(self, p: Any) -> None:
        if self.closed:
            return
        text, value, total = _texts.describe_progress(p, self.epochs, self._kind)
        stage = getattr(p, "stage", None)
        if stage == "plan":
            self.message.emit(f"{self._started} {_texts.describe_estimate(p)}")
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._stage_t0, self._stage_step0 = stage, now, value
        done = value - self._stage_step0
        if total and 0 < done and value < total:
            left = (now - self._stage_t0) * (total - value) / done
            text += " · " + _texts.time_left(left) + (" (this stage)" if stage != "align" else "")
        self.progress.emit(text, value, total)

    def _on_returned(self, info: Any) -> None:
        if self.closed:
            return
        if info is None:
            text = "Training cancelled; nothing was saved."
            self.message.emit(text)
            self.progress.emit("Cancelled", 0, 1)
            self.notify("info", text)
            return
        self.last_info = info
        text = _texts.describe_result(info, time.perf_counter() - self._t0)
        self.message.emit(text)
        self.progress.emit("Done", 1, 1)
        self.notify("info", text)
        self.learned.emit(info)

    def _on_error(self, exc: BaseException) -> None:
        if self.closed:
            return
        from casam.errors import CasamError

        if isinstance(exc, CasamError):
            self.fail(str(exc))
        else:
            import logging

            logging.getLogger(__name__).error("learning failed", exc_info=exc)
            self.fail(f"Learning failed: {type(exc).__name__}: {exc}", error=True)
        self.progress.emit("Failed", 0, 1)

    def _on_finished(self) -> None:
        self.worker = None
        self.cancelling = False
        if not self.closed:
            self.state_changed.emit(False)

    def fail(self, msg: str, error: bool = False) -> None:
        self.last_error = msg
        self.message.emit(msg)
        self.notify("error" if error else "warning", msg)
