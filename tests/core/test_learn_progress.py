"""casam learn's progress when stderr is not a terminal: a short line every few seconds."""

from __future__ import annotations

import io

from casam.cli.learn_progress import LearnDisplay
from casam.training import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run(events: list[tuple[float, Progress]]) -> list[str]:
    out, clock = io.StringIO(), Clock()
    show = LearnDisplay(epochs=8, stream=out, every=5.0, clock=clock, tty=False)
    for t, pr in events:
        clock.t = t
        show(pr)
    show.close()
    return out.getvalue().splitlines()


def test_a_line_per_stage_and_every_few_seconds_not_per_step():
    events = [(0.0, Progress("embed", 1, 4))]
    events += [(1.0 * k, Progress("embed", k, 4)) for k in (2, 3, 4)]
    events += [
        (4.0 + 0.5 * k, Progress("align", k, 40, epoch=1 + k // 5, loss=0.5)) for k in range(1, 41)
    ]
    lines = _run(events)
    assert lines[0].startswith("casam learn: embedding the images · 1/4")
    assert any(line.startswith("casam learn: embedding the images · 4/4") for line in lines)
    align = [line for line in lines if "Alignment Layer" in line]
    # 20 s of training at a line every 5 s: the first, four more and the last, not 40.
    assert 4 <= len(align) <= 7
    assert "epoch" in align[1] and "of 8" in align[1] and "loss 0.500" in align[1]


def test_time_left_comes_from_the_stage_rate():
    lines = _run(
        [
            (0.0, Progress("align", 1, 100, epoch=1, loss=1.0)),
            (10.0, Progress("align", 11, 100, epoch=1, loss=1.0)),
        ]
    )
    # 10 s since the stage began for 11 steps: 89 steps left at ~0.91 s each, ~81 s.
    assert "about 81 s left" in lines[-1]


def test_no_time_left_on_the_last_step():
    lines = _run([(0.0, Progress("vae", 0, 1)), (3.0, Progress("vae", 1, 1))])
    assert lines[-1] == "casam learn: fitting the router · 1/1"
