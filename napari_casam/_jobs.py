"""Run the engine's long work off the GUI thread, one job at a time (no Qt imported here).

Every job is a generator function: it yields progress and returns its result, as in
stardist-napari. ``CASAM_NAPARI_NOTHREADS=1`` runs jobs synchronously in the calling thread
(deterministic tests, debugging); otherwise napari's ``create_worker`` runs them in a thread,
and its callbacks arrive in the GUI thread.

A worker runs its jobs at a lower CPU priority than the GUI thread (:func:`yield_to_gui`): on a
machine with few cores the engine's compute threads (torch's and OpenVINO's, started from the
worker, inherit its priority) would otherwise take the cores the GUI thread needs to draw.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from psygnal import Signal

log = logging.getLogger(__name__)

Callback = Callable[[Any], None] | None

#: How much nicer than the process (the GUI thread) a worker runs; ``CASAM_WORKER_NICE`` overrides
#: it (0: the same priority). Linux and other systems with per-thread priorities only.
WORKER_NICE = 5


def threads_disabled() -> bool:
    """True when ``CASAM_NAPARI_NOTHREADS`` asks for synchronous jobs."""
    value = os.environ.get("CASAM_NAPARI_NOTHREADS", "").strip().lower()
    return value not in ("", "0", "false", "no")


def worker_nice() -> int:
    """The niceness step of worker threads (``CASAM_WORKER_NICE``, else :data:`WORKER_NICE`)."""
    try:
        return max(0, int(os.environ.get("CASAM_WORKER_NICE", WORKER_NICE)))
    except ValueError:
        return WORKER_NICE


def yield_to_gui() -> None:
    """Make the calling thread :func:`worker_nice` nicer than the process (once; never less nice).

    The threads it starts afterwards (torch's OpenMP team, OpenVINO's compute threads) inherit
    the priority, so the GUI thread gets a core at once when it has something to draw; when it
    has nothing, the workers use every core as before.
    """
    step = worker_nice()
    if step <= 0 or not hasattr(os, "setpriority") or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        target = min(os.getpriority(os.PRIO_PROCESS, os.getpid()) + step, 19)
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError:  # not allowed here: the job runs at the priority it has
        pass


def _in_worker(func: Callable[..., Generator[Any, None, Any]]):
    """``func`` run at the worker's priority (still a generator function, for napari)."""

    @functools.wraps(func)
    def run(*args: Any) -> Generator[Any, None, Any]:
        yield_to_gui()
        return (yield from func(*args))

    return run


class _SyncWorker:
    """What ``start`` returns when threads are disabled: the job already ran."""

    is_running = False

    def quit(self) -> None:
        pass


def _run_sync(
    func: Callable[..., Generator[Any, None, Any]],
    args: tuple,
    yielded: Callback,
    returned: Callback,
    errored: Callback,
    finished: Callable[[], None] | None,
) -> _SyncWorker:
    from casam.progress import drive

    try:
        value = drive(func(*args), yielded)
        if returned:
            returned(value)
    except Exception as exc:  # noqa: BLE001 - handed to the caller's error handler
        if errored is None:
            raise
        errored(exc)
    finally:
        if finished:
            finished()
    return _SyncWorker()


def relay(
    gen: Generator[Any, None, Any], should_stop: Callable[[], bool]
) -> Generator[Any, None, Any]:
    """``yield from gen`` for a worker: :func:`casam.progress.relay`, with the user's words."""
    from casam.errors import Cancelled
    from casam.progress import relay as steps

    try:
        return (yield from steps(gen, should_stop))
    except Cancelled:
        raise Cancelled("stopped at the user's request; nothing was saved") from None


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
        return _run_sync(func, args, yielded, returned, errored, finished)
    from napari.qt.threading import create_worker

    worker = create_worker(_in_worker(func), *args, _start_thread=False, _ignore_errors=True)
    for name, cb in (
        ("yielded", yielded),
        ("returned", returned),
        ("errored", errored),
        ("finished", finished),
    ):
        if cb is not None:
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


class JobQueue:
    """Runs jobs one after another, so only one touches the predictor at a time.

    A job submitted with ``replace=True`` drops queued (not running) jobs of the same ``key``:
    scrolling through a volume routes only the slice the user stops on. A job submitted with
    ``background=True`` (prefetching) runs only when no other job waits: a box the user just
    drew waits at most for the background job already running. Background jobs do not make
    the queue ``busy``, and they are dropped when threads are disabled (they must never block
    the caller). ``starter`` runs one job (default :func:`start`; tests pass a manual one).
    """

    busy_changed = Signal(bool)

    def __init__(self, starter: Callable[..., Any] | None = None) -> None:
        self._pending: deque[Job] = deque()
        self._background: deque[Job] = deque()
        self._current: Job | None = None
        self._current_bg = False
        self._worker: Any = None
        self._running_sync = False
        self._shown_busy = False
        self._start = starter or start
        self.closed = False

    @property
    def busy(self) -> bool:
        """True while a job (not a background one) runs or waits."""
        return (self._current is not None and not self._current_bg) or bool(self._pending)

    @property
    def background_busy(self) -> bool:
        return (self._current is not None and self._current_bg) or bool(self._background)

    @property
    def synchronous(self) -> bool:
        return self._start is start and threads_disabled()

    @property
    def worker(self) -> Any:
        """The napari worker of the running job (None when idle or synchronous)."""
        return self._worker

    def submit(self, job: Job, replace: bool = False, background: bool = False) -> None:
        if self.closed or (background and self.synchronous):
            return
        queue = self._background if background else self._pending
        if replace and job.key is not None:
            kept = [j for j in queue if j.key != job.key]
            queue.clear()
            queue.extend(kept)
        queue.append(job)
        self._show_busy()
        self._run_next()

    def drop(self, key: str) -> None:
        """Drop the queued jobs of ``key`` (the running one finishes)."""
        for queue in (self._pending, self._background):
            kept = [j for j in queue if j.key != key]
            queue.clear()
            queue.extend(kept)
        self._show_busy()

    def clear(self) -> None:
        """Drop queued jobs; the running one finishes (or stops at its next yield)."""
        self._pending.clear()
        self._background.clear()
        if self._worker is not None and getattr(self._worker, "is_running", False):
            self._worker.quit()

    def close(self) -> None:
        """Refuse new jobs from now on and stop the running one at its next yield."""
        self.closed = True
        self.clear()

    def _run_next(self) -> None:
        if self._current is not None or self._running_sync:
            return
        if self.synchronous:
            self._running_sync = True
            try:
                while self._pending:
                    self._current = self._pending.popleft()
                    self._launch(self._current)
                    self._current = None
            finally:
                self._running_sync = False
            self._show_busy()
            return
        if self._pending or self._background:
            self._current_bg = not self._pending
            self._current = (self._background if self._current_bg else self._pending).popleft()
            self._show_busy()
            self._worker = self._launch(self._current, on_done=self._done)
        self._show_busy()

    def _show_busy(self) -> None:
        """Emit ``busy_changed`` when :attr:`busy` changed since it was last emitted."""
        busy = self.busy or self._running_sync
        if busy != self._shown_busy and not self.closed:
            self._shown_busy = busy
            self.busy_changed.emit(busy)

    def _launch(self, job: Job, on_done: Callable[[], None] | None = None) -> Any:
        def finished() -> None:
            try:
                if job.finished and not self.closed:
                    job.finished()
            finally:
                if on_done:
                    on_done()

        return self._start(
            job.func,
            *job.args,
            yielded=self._unless_closed(job.yielded),
            returned=self._unless_closed(job.returned),
            errored=self._unless_closed(job.errored or _log_error),
            finished=finished,
        )

    def _unless_closed(self, cb: Callback) -> Callback:
        """``cb``, silenced once the queue is closed (its views may be gone by then)."""
        if cb is None:
            return None
        return lambda value: None if self.closed else cb(value)

    def _done(self) -> None:
        self._current = None
        self._current_bg = False
        self._worker = None
        self._run_next()


def _log_error(exc: BaseException) -> None:
    log.error("napari-casam job failed", exc_info=exc)
