"""Driving the engine's generators of progress events (training, volume jobs, batch runs).

Long work in casam is a generator that yields progress events and returns its result; closing it
between two events cancels it with nothing saved. ``drive`` is the one loop every caller (the
CLI, the benchmarks, :func:`casam.learn_task`) runs it with; ``relay`` is the same loop for a
caller that passes the events on (a napari worker).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from casam.errors import Cancelled

E = TypeVar("E")
R = TypeVar("R")


@dataclass(frozen=True)
class Progress:
    """One step of learning. ``stage`` is plan, embed, align, vae, evaluate, second (a second
    adapter kind, ``LearnSettings.adapter`` "auto") or save."""

    stage: str
    step: int
    total: int
    epoch: int | None = None
    loss: float | None = None
    message: str = ""
    estimate: Any = None
    """The ``casam.estimate.LearnEstimate`` of a "plan" event."""

    def __str__(self) -> str:
        s = f"{self.stage} {self.step}/{self.total}"
        if self.epoch is not None:
            s += f" epoch {self.epoch}"
        if self.loss is not None:
            s += f" loss {self.loss:.4f}"
        return s + (f" {self.message}" if self.message else "")


def relay(
    gen: Generator[E, None, R], should_stop: Callable[[], bool] | None = None
) -> Generator[E, None, R]:
    """``yield from gen`` with a stop check: the one loop that steps the engine's generators.

    ``should_stop`` is asked before each step; when it returns True the generator is closed
    (its ``finally`` blocks run, nothing is saved) and :class:`casam.errors.Cancelled` is raised.
    The generator is closed on any exception too, and when the caller closes this one. A napari
    worker re-yields the events to the GUI thread through it; :func:`drive` consumes them.
    """
    try:
        while True:
            if should_stop is not None and should_stop():
                raise Cancelled("stopped at the caller's request; nothing was saved")
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield event
    finally:
        gen.close()


def drive(
    gen: Generator[E, None, R],
    on_event: Callable[[E], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> R:
    """Run ``gen`` to its end and return its value; ``on_event`` sees every event.

    Stopping and closing as in :func:`relay`.
    """
    steps = relay(gen, should_stop)
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def duration(seconds: float) -> str:
    """A span of time as a person reads it: "40 s", "6.5 min", "1.2 h"."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
