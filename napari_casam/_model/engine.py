"""The model and its library as Qt-free state: load, reconfigure, reload after a change."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psygnal import Signal

from napari_casam import _texts
from napari_casam._jobs import Job, JobQueue
from napari_casam._notify import notify

if TYPE_CHECKING:
    from napari_casam._session import Session


class EngineModel:
    """Loads the predictor through the dock's job queue and says what it loaded."""

    status_changed = Signal(str)
    """The model panel's status line."""
    devices_changed = Signal(list)
    tasks_changed = Signal(list)
    """Task names routing uses (after a load or a reload)."""
    ready_changed = Signal()
    """The predictor was (re)loaded or dropped: route again."""

    def __init__(self, session: Session, jobs: JobQueue, on_error: Callable[[Any], None]) -> None:
        self.session = session
        self.jobs = jobs
        self.on_error = on_error
        self.notify: Callable[[str, str], None] = notify
        self.status = ""

    def _set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    def load(self, ready: bool, on_text: Callable[[Any], None] | None = None) -> None:
        """Load the predictor in the background (only a status line while ``ready`` is False:
        the chosen backbone still needs its checkpoint file)."""
        from napari_casam._session import backbone_title

        if not ready:
            title = backbone_title(self.session.backbone)
            self._set_status(f"Choose the checkpoint file of {title} to use it.")
            return
        self._set_status("Loading the model…")
        self.jobs.submit(
            Job(
                self.session.job_load,
                key="load",
                yielded=on_text,
                returned=self._on_loaded,
                errored=self._on_load_error,
            )
        )

    def _on_loaded(self, result: tuple[Any, list[str]]) -> None:
        predictor, devices = result
        self.devices_changed.emit(devices)
        names = list(self.session.verified[0]) if self.session.verified else []
        self._show_loaded(predictor, len(names))
        self.tasks_changed.emit(names)
        problems = self.session.verified[1] if self.session.verified else []
        if problems:
            self.notify(
                "warning", "Some tasks of the library cannot be used: " + "; ".join(problems[:3])
            )
        self.ready_changed.emit()

    def _show_loaded(self, predictor: Any, n_tasks: int) -> None:
        from napari_casam._session import backbone_title

        device = str(getattr(predictor.backbone, "device", "?"))
        title = backbone_title(self.session.backbone)
        runtime = getattr(predictor.backbone, "runtime", None)
        described = runtime.describe() if runtime is not None else ""
        self._set_status(
            _texts.model_status(title, device, n_tasks, predictor.backbone.identity, described)
        )

    def _on_load_error(self, exc: BaseException) -> None:
        self._set_status(f"Model not loaded: {exc}")
        self.on_error(exc)

    def configure(
        self,
        backbone: str,
        checkpoint: str,
        device: str,
        library: str,
        disk_cache: bool,
        ready: bool,
    ) -> bool:
        """Apply the user's choices; reloads when anything changed (returns whether it did)."""
        if not self.session.configure(backbone, checkpoint, device, library, disk_cache):
            return False
        self.tasks_changed.emit(self.session.task_names() if ready else [])
        self.ready_changed.emit()
        self.load(ready)
        return True

    def reload(self) -> None:
        """Make the predictor re-read the library (after learn, rename, delete, import)."""
        self.jobs.submit(
            Job(
                self.session.job_reload,
                key="reload",
                returned=self._on_reloaded,
                errored=self.on_error,
            )
        )

    def _on_reloaded(self, names: list[str]) -> None:
        self.tasks_changed.emit(list(names))
        if self.session.predictor is not None:
            self._show_loaded(self.session.predictor, len(names))
        self.ready_changed.emit()
