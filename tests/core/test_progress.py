"""casam.progress.drive: the one loop that runs the engine's progress generators."""

from __future__ import annotations

import pytest

from casam.errors import Cancelled
from casam.progress import drive


def _work(log: list[str]):
    try:
        for i in range(3):
            log.append(f"step {i}")
            yield i
        return "result"
    finally:
        log.append("closed")


def test_drive_returns_the_value_and_shows_every_event():
    log: list[str] = []
    seen: list[int] = []
    assert drive(_work(log), seen.append) == "result"
    assert seen == [0, 1, 2]
    assert log[-1] == "closed"


def test_drive_stops_between_events_and_closes_the_generator():
    log: list[str] = []
    seen: list[int] = []
    with pytest.raises(Cancelled):
        drive(_work(log), seen.append, should_stop=lambda: len(seen) >= 2)
    assert seen == [0, 1]
    assert log == ["step 0", "step 1", "closed"]


def test_drive_closes_the_generator_when_the_callback_fails():
    log: list[str] = []

    def boom(_event: int) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError):
        drive(_work(log), boom)
    assert log == ["step 0", "closed"]
