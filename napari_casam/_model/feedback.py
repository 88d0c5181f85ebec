"""What the dock shows about its jobs: the status line, the job bar, errors (no Qt here).

A mixin of :class:`~napari_casam._model.dock.DockModel`, which owns the signals
(``status_changed``, ``job_changed``, ``cancellable``) and ``notify``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("napari_casam._model.dock")


class JobFeedback:
    """Job feedback of the dock model: status text, job text and counts, idle, errors."""

    status: str
    status_changed: Any
    job_changed: Any
    cancellable: Any
    notify: Any

    def set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    def on_job_text(self, value: Any) -> None:
        if isinstance(value, str):
            self.job_changed.emit(value, 0, 0)

    def on_count(self, what: str, value: tuple[int, int]) -> None:
        done, total = value
        self.job_changed.emit(f"{what} {done}/{total}", done, max(total, 1))

    def on_idle(self) -> None:
        self.job_changed.emit("Idle", 0, 1)
        self.cancellable.emit(False)

    def on_job_error(self, exc: BaseException) -> None:
        from casam.errors import Cancelled, CasamError

        if isinstance(exc, Cancelled):
            self.set_status("Cancelled.")
            return
        if isinstance(exc, CasamError):
            self.notify("warning", str(exc))
            self.set_status(str(exc))
            return
        log.error("napari-casam: background job failed", exc_info=exc)
        self.notify("error", f"CA-SAM: {type(exc).__name__}: {exc}")
        self.set_status(f"Failed: {exc}")
