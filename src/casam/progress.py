"""Driving the engine's generators of progress events (training, volume jobs, batch runs).

Long work in casam is a generator that yields progress events and returns its result; closing it
between two events cancels it with nothing saved. ``drive`` is the one loop every caller (the
CLI, the napari workers, the benchmarks, :func:`casam.learn_task`) runs it with.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

from casam.errors import Cancelled

E = TypeVar("E")
R = TypeVar("R")


def drive(
    gen: Generator[E, None, R],
    on_event: Callable[[E], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> R:
    """Run ``gen`` to its end and return its value; ``on_event`` sees every event.

    ``should_stop`` is asked before each step; when it returns True the generator is closed
    (its ``finally`` blocks run, nothing is saved) and :class:`casam.errors.Cancelled` is raised.
    The generator is closed on any exception too.
    """
    try:
        while True:
            if should_stop is not None and should_stop():
                raise Cancelled("stopped at the caller's request; nothing was saved")
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)
    finally:
        gen.close()
