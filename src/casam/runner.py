"""Running batch units: in this process, or on Dask (:mod:`casam.cluster`), in input order.

Progress (inputs done / failed, rate, ETA) goes to stderr; outcomes go to a callback in input
order, so a batch run prints exactly what the serial run prints for the same inputs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from casam.batch import Outcome, Unit, leftover_tmp, run_unit
from casam.errors import InputError


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def parse_scheduler(spec: str) -> tuple[str, int | None]:
    """``"local"`` / ``"local:N"`` -> ("local", N); ``"tcp://HOST:PORT"`` -> (address, None)."""
    if spec == "local" or spec.startswith("local:"):
        n_raw = spec.partition(":")[2] or str(max(1, cpu_count() // 2))
        if not n_raw.isdigit() or int(n_raw) < 1:
            raise InputError(f"--scheduler {spec}: N in local:N must be a whole number >= 1")
        return "local", int(n_raw)
    scheme, sep, rest = spec.partition("://")
    if not sep or scheme not in ("tcp", "tls", "ucx", "inproc") or not rest:
        raise InputError(
            f"--scheduler {spec}: give local, local:N or tcp://HOST:PORT of a running scheduler"
        )
    return spec, None


@dataclass
class Progress:
    """Items done / failed, rate and ETA, written to a stream at most every ``every`` s."""

    total: int
    stream: Any = field(default_factory=lambda: sys.stderr)
    every: float = 2.0
    done: int = 0
    failed: int = 0
    start: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        now = time.monotonic()
        if now - self._last >= self.every or self.done == self.total:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.monotonic()) - self.start)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:.0f} s" if eta != float("inf") else "?"
        return (
            f"casam: {self.done}/{self.total} done, {self.failed} failed, "
            f"{rate:.2f} inputs/s, ETA {eta_s}"
        )


def in_order(pairs: Iterator[tuple[int, Outcome]], n: int) -> Iterator[Outcome]:
    """Re-order (position, outcome) pairs arriving in any order into position order."""
    waiting: dict[int, Outcome] = {}
    nxt = 0
    for pos, o in pairs:
        waiting[pos] = o
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1
    if nxt != n:
        raise RuntimeError(f"only {nxt} of {n} outcomes arrived")


def load_cluster(scheduler: str) -> Any:
    """:mod:`casam.cluster` after checking ``scheduler``; a one-line error without Dask."""
    parse_scheduler(scheduler)
    try:
        from casam import cluster
    except ImportError:
        raise InputError(
            "--scheduler needs Dask distributed: pip install 'napari-casam[cluster]'"
        ) from None
    return cluster


def run_serial(
    predictor: Any, command: str, units: Sequence[Unit], opts: dict[str, Any]
) -> Iterator[Outcome]:
    """The same units in this process, one after another (no Dask)."""
    for u in units:
        yield run_unit(predictor, command, u, opts)


def remove_leftovers(units: Sequence[Unit]) -> int:
    """Delete temporaries that a killed writer left beside the units' outputs; how many."""
    n = 0
    for u in units:
        if u.out is not None:
            for tmp in leftover_tmp(u.out):
                tmp.unlink(missing_ok=True)
                n += 1
    return n


def execute(
    command: str,
    units: Sequence[Unit],
    opts: dict[str, Any],
    predictor_kwargs: dict[str, Any],
    scheduler: str | None,
    on_outcome: Callable[[Outcome], None],
    stream: Any = None,
) -> list[Outcome]:
    """Run ``units`` (on ``scheduler``, or here when None); ``on_outcome`` sees each in order."""
    stream = stream or sys.stderr
    progress = Progress(len(units), stream)
    outcomes: list[Outcome] = []
    remove_leftovers(units)
    if scheduler is None:
        from casam.predictor import Predictor

        client, stream_of = None, run_serial(Predictor(**predictor_kwargs), command, units, opts)
    else:
        cluster = load_cluster(scheduler)

        client = cluster.open_client(scheduler, predictor_kwargs)
        link = cluster.dashboard(client)
        print(f"casam: {len(units)} inputs on {client.scheduler.address}", file=stream)
        if link:
            print(f"casam: dashboard {link}", file=stream)
        stream_of = cluster.run_dask(client, command, units, opts)
    try:
        for o in stream_of:
            outcomes.append(o)
            on_outcome(o)
            progress.update(o.ok)
    finally:
        stream_of.close()
        if client is not None:
            cluster.close_client(client)
        remove_leftovers(units)
    return outcomes
