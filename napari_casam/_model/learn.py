"""Learning a task as Qt-free state: checks before starting, progress, cancel, outcome."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from psygnal import Signal

from napari_casam import _jobs, _texts
from napari_casam._layers import training_pairs

if TYPE_CHECKING:
    from napari_casam._session import Session


_STARTING = object()


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
        self.worker: Any = None
        self.cancelling = False
        self.last_info: Any = None
        self.last_error: str | None = None
        self.epochs: int | None = None
        self.closed = False
        self._stage: str | None = None
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

    def check(self, name: str, mode: str, image: Any, labels: Any) -> str | None:
        """Why a training cannot start (None: it can)."""
        if self.running:
            return "A task is already being learned; cancel it first."
        if not name:
            return "Give the new task a name first."
        if image is None:
            return "Select an image layer to learn from."
        if labels is None:
            return "Choose the Labels layer with the corrected masks of this image."
        if image.multiscale:
            return "Multiscale images are not supported for learning; use a single-scale copy."
        names = self.session.task_names()
        if mode == "new" and name in names:
            return f"A task named “{name}” exists: choose Retrain or Extend, or another name."
        if mode != "new" and name not in names:
            return f"There is no task “{name}” to retrain or extend."
        return None

    def start(self, name: str, mode: str, image: Any, labels: Any, epochs: int) -> bool:
        """Start training; returns False (with a message) when it cannot start."""
        problem = self.check(name, mode, image, labels)
        if problem is None:
            try:
                images, masks, _ = training_pairs(image.data, labels.data, image.rgb)
            except ValueError as exc:
                problem = str(exc)
            else:
                if not images:
                    problem = (
                        f"“{labels.name}” has no labels yet: segment and correct some slices first."
                    )
        if problem:
            self.fail(problem)
            return False
        from casam import LearnSettings

        settings = LearnSettings(**{"epochs": epochs, **self.settings_overrides})
        self.epochs = settings.epochs
        self._cancel = threading.Event()
        self.cancelling = False
        self._t0 = time.perf_counter()
        self._stage = None
        self.last_error = None
        self._started = f"Learning “{name}” from {len(images)} annotated images…"
        self.message.emit(self._started)
        self.progress.emit("Starting…", 0, 0)
        self.worker = _STARTING  # running from here on (a synchronous run ends inside start)
        self.state_changed.emit(True)
        worker = _jobs.start(
            self.session.job_learn,
            images,
            masks,
            name,
            settings,
            mode == "replace",
            mode == "extend",
            self._cancel,
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
        text, value, total = _texts.describe_progress(p, self.epochs)
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
