"""Run the engine's long work off the GUI thread.

Every job is a generator function: it yields progress and returns its result, as in
stardist-napari. ``CASAM_NAPARI_NOTHREADS=1`` runs jobs synchronously in the calling thread
(deterministic tests, debugging); otherwise napari's ``create_worker`` runs them in a thread.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)

Callback = Callable[[Any], None] | None


def threads_disabled() -> bool:
    """True when ``CASAM_NAPARI_NOTHREADS`` asks for synchronous jobs."""
    return os.environ.get("CASAM_NAPARI_NOTHREADS", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


class _SyncWorker:
    """What ``start`` returns when threads are disabled: the job already ran."""

    is_running = False

    def quit(self) -> None:
        pass


def start(
    func: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    yielded: Callback = None,
    returned: Callback = None,
    errored: Callback = None,
    finished: Callable[[], None] | None = None,
) -> Any:
    """Run the generator function ``func(*args)``; callbacks run in the GUI thread.

    Returns the napari worker (``worker.quit()`` stops it between yields), or a stub when
    threads are disabled, in which case everything already ran when this returns.
    """
    if threads_disabled():
        try:
            gen = func(*args)
            while True:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    if returned:
                        returned(stop.value)
                    break
                if yielded:
                    yielded(value)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's error handler
            if errored is None:
                raise
            errored(exc)
        finally:
            if finished:
                finished()
        return _SyncWorker()

    from napari.qt.threading import create_worker

    connect: dict[str, Any] = {}
    for name, cb in (
        ("yielded", yielded),
        ("returned", returned),
        ("errored", errored),
        ("finished", finished),
    ):
        if cb is not None:
            connect[name] = cb
    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
    for name, cb in connect.items():
        getattr(worker, name).connect(cb)
    worker.start()
    return worker


@dataclass
class Job:
    """One unit of work for a :class:`JobQueue`."""

    func: Callable[..., Generator[Any, None, Any]]
    args: tuple = ()
    key: str | None = None
    yielded: Callback = None
    returned: Callback = None
    errored: Callback = None
    finished: Callable[[], None] | None = None
    extra: dict = field(default_factory=dict)


class JobQueue(QObject):
    """Runs jobs one after another, so only one touches the predictor at a time.

    A job submitted with ``replace=True`` drops queued (not running) jobs of the same ``key``:
    scrolling through a volume routes only the slice the user stops on.
    """

    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._worker: Any = None
        self._running_sync = False

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._pending)

    @property
    def current_key(self) -> str | None:
        return self._current.key if self._current else None

    def pending_keys(self) -> list[str | None]:
        return [j.key for j in self._pending]

    def submit(self, job: Job, replace: bool = False) -> None:
        was_busy = self.busy
        if replace and job.key is not None:
            self._pending = deque(j for j in self._pending if j.key != job.key)
        self._pending.append(job)
        if not was_busy:
            self.busy_changed.emit(True)
        self._run_next()

    def clear(self) -> None:
        """Drop queued jobs; the running one finishes (or stops at its next yield)."""
        self._pending.clear()
        if self._worker is not None and getattr(self._worker, "is_running", False):
            self._worker.quit()

    def _run_next(self) -> None:
        if self._current is not None or self._running_sync:
            return
        if threads_disabled():
            self._running_sync = True
            try:
                while self._pending:
                    self._current = self._pending.popleft()
                    self._launch(self._current)
                    self._current = None
            finally:
                self._running_sync = False
            self.busy_changed.emit(False)
            return
        if not self._pending:
            self.busy_changed.emit(False)
            return
        self._current = self._pending.popleft()
        self._worker = self._launch(self._current, on_done=self._done)

    def _launch(self, job: Job, on_done: Callable[[], None] | None = None) -> Any:
        def finished() -> None:
            try:
                if job.finished:
                    job.finished()
            finally:
                if on_done:
                    on_done()

        return start(
            job.func,
            *job.args,
            yielded=job.yielded,
            returned=job.returned,
            errored=job.errored or _log_error,
            finished=finished,
        )

    def _done(self) -> None:
        self._current = None
        self._worker = None
        self._run_next()


def _log_error(exc: BaseException) -> None:
    log.error("napari-casam job failed", exc_info=exc)
