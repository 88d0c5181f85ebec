"""How ``casam learn`` shows its progress: bars on a terminal, a short line every few seconds
elsewhere (a log file, CI, a notebook), so a long training never looks stuck."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from casam.progress import duration

STAGE_WORDS = {
    "plan": "timing this machine",
    "embed": "embedding the images",
    "align": "training the Alignment Layer",
    "vae": "fitting the router",
    "evaluate": "evaluating on held-out slices",
    "second": "training decoder adapters too (the Alignment Layer gained little on them)",
    "save": "saving the task",
}


class LearnDisplay:
    """Shows ``casam.training.Progress`` events; call :meth:`close` at the end.

    ``every``: seconds between two lines when ``stream`` is not a terminal; ``clock`` is
    injectable for tests. ``epochs`` is the schedule's epoch count (for "epoch k of n").
    """

    def __init__(
        self,
        epochs: int,
        stream: TextIO | None = None,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        adapter: str = "alignment",
    ) -> None:
        self.epochs = epochs
        self.adapter = adapter
        """The adapter kind being trained (its words in the "align" stage)."""
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.clock = clock
        self.tty = self.stream.isatty() if tty is None else tty
        self._bars: dict[str, Any] = {}
        self._stage = ""
        self._stage_start = 0.0
        self._last_line = -float("inf")
        self.estimate: Any = None
        """The ``LearnEstimate`` of the "plan" event, once seen."""

    def __call__(self, pr: Any) -> None:
        now = self.clock()
        if pr.stage == "plan":
            self.estimate = pr.estimate
            print(f"casam learn: estimated {pr.message}", file=self.stream, flush=True)
            return
        if pr.stage != self._stage:
            self._stage, self._stage_start = pr.stage, now
            if not self.tty:
                self._line(pr, now)
                return
        if self.tty:
            self._bar(pr)
        elif now - self._last_line >= self.every or pr.step == pr.total:
            self._line(pr, now)

    def text(self, pr: Any, now: float) -> str:
        """One line: stage, step k of n, epoch k of n, loss and the stage's time left."""
        stage = STAGE_WORDS.get(pr.stage, pr.stage)
        if pr.stage == "align" and self.adapter == "decoder":
            stage = "training the decoder adapters"
        words = [stage, f"{pr.step}/{pr.total}"]
        if pr.epoch is not None:
            words.append(f"epoch {pr.epoch} of {self.epochs}")
        if pr.loss is not None:
            words.append(f"loss {pr.loss:.3f}")
        elapsed = now - self._stage_start
        if 0 < pr.step < pr.total and elapsed > 0:
            words.append(f"about {duration(elapsed / pr.step * (pr.total - pr.step))} left")
        return "casam learn: " + " · ".join(words)

    def _line(self, pr: Any, now: float) -> None:
        self._last_line = now
        print(self.text(pr, now), file=self.stream, flush=True)

    def _bar(self, pr: Any) -> None:
        from tqdm import tqdm

        bar = self._bars.get(pr.stage)
        if bar is None:
            bar = self._bars[pr.stage] = tqdm(
                total=pr.total, desc=pr.stage, file=self.stream, leave=False, dynamic_ncols=True
            )
        bar.total, bar.n = pr.total, pr.step
        if pr.loss is not None:
            bar.set_postfix(epoch=f"{pr.epoch}/{self.epochs}", loss=f"{pr.loss:.3f}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
