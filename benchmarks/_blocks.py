"""What the threads were doing while the Qt event loop was blocked (gui_latency.py --stacks MS).

For every block longer than MS ms it prints:

- the GUI thread's own accounting over the block, from the kernel (``/proc/thread-self/
  schedstat``, read at every heartbeat tick): time on a CPU (work done in the GUI thread: ours
  or napari's), time runnable but waiting for a core (machine load, or the workers' compute
  threads taking both cores), and the rest, asleep (waiting for the GIL: the event loop is
  never idle while the heartbeat is late);
- the other threads that used a CPU during the block (kernel thread names, CPU ms);
- the GUI thread's most frequent Python stacks and the other threads' busy ones, sampled every
  2 ms by a watchdog thread (``sys._current_frames``; it needs the GIL itself, so a thread
  holding the GIL in C shows at the line that made the call);
- every thread's stack at MS ms into the block from ``faulthandler`` (a C watchdog that needs no
  GIL), re-armed at every tick.

Durations under load are not figures; the split and the stacks are what to read.
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

#: Innermost frames of a thread that waits (not holding the GIL, not working).
IDLE = ("threading.py", "selectors.py", "queue.py", "connection.py", "thread.py:81")
TASKS = Path("/proc/self/task")


def schedstat() -> dict[int, tuple[float, str]]:
    """Kernel thread id -> (ms on a CPU so far, thread name)."""
    out = {}
    for d in TASKS.iterdir():
        try:
            run = int((d / "schedstat").read_text().split()[0]) / 1e6
            out[int(d.name)] = (run, (d / "comm").read_text().strip())
        except (OSError, ValueError, IndexError):
            continue
    return out


def stack_of(frame, depth: int = 6) -> tuple[str, ...]:
    frames = []
    while frame is not None and len(frames) < depth:
        code = frame.f_code
        frames.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return tuple(frames)


def busy(stack: tuple[str, ...]) -> bool:
    return bool(stack) and not stack[0].startswith(IDLE)


class BlockSampler:
    """Watches a :class:`gui_latency.Heartbeat` (see the module's text)."""

    def __init__(self, heartbeat, ms: float, log) -> None:
        self.hb, self.ms, self.log = heartbeat, ms, log
        self.main = threading.main_thread()
        self.reports: list[dict] = []
        self._stat = open("/proc/thread-self/schedstat")  # opened in (and for) the GUI thread
        self._gui0 = self._gui()
        self._samples: list[dict] = []
        self._others: dict | None = None
        self._dump = tempfile.TemporaryFile("w+")
        self._dumped = 0
        heartbeat.on_tick.append(self._on_tick)
        faulthandler.dump_traceback_later(ms / 1000.0, file=self._dump)
        threading.Thread(target=self._watch, name="block-sampler", daemon=True).start()

    def _gui(self) -> tuple[float, float, float]:
        self._stat.seek(0)
        run, wait, _ = self._stat.read().split()
        return time.perf_counter() * 1000.0, int(run) / 1e6, int(wait) / 1e6

    def _watch(self) -> None:
        me = threading.get_ident()
        while True:
            time.sleep(0.002)
            last = self.hb._last
            if time.perf_counter() - last < 0.010:
                continue
            self._others = schedstat()
            while self.hb._last == last:
                frames = sys._current_frames()
                self._samples.append({t: stack_of(f) for t, f in frames.items() if t != me})
                time.sleep(0.002)

    def _on_tick(self, gap: float, phase: str) -> None:
        now = self._gui()
        (w0, c0, q0), self._gui0 = self._gui0, now
        samples, self._samples = self._samples, []
        others, self._others = self._others, None
        if gap >= self.ms:
            cpu, rq = now[1] - c0, now[2] - q0
            asleep = max(now[0] - w0 - 5.0 - cpu - rq, 0.0)  # 5 ms: the timer's own wait
            self._report(gap, phase, (cpu, rq, asleep), samples, others)
        faulthandler.dump_traceback_later(self.ms / 1000.0, file=self._dump)

    def _report(self, gap: float, phase: str, split, samples: list, others) -> None:
        cpu, rq, asleep = split
        lines = [
            f"=== block {gap:.0f} ms, phase {phase}: GUI thread cpu {cpu:.0f} ms, runnable "
            f"{rq:.0f} ms, asleep (GIL) {asleep:.0f} ms; other threads' cpu since the sampler "
            f"saw it: {self._other_cpu(others)}"
        ]
        main = self.main.ident
        gui = Counter(s[main] for s in samples if main in s)
        for stack, n in gui.most_common(3):
            lines.append(f"  GUI x{n}/{len(samples)}: " + " < ".join(stack))
        work = Counter((t, s[t]) for s in samples for t in s if t != main and busy(s[t]))
        for (tid, stack), n in work.most_common(3):
            lines.append(f"  thread {tid % 100000} x{n}: " + " < ".join(stack))
        lines += self._faulthandler_stacks()
        self.log("\n".join(lines))
        self.reports.append(
            {
                "ms": round(gap, 1),
                "phase": phase,
                "gui_cpu_ms": round(cpu, 1),
                "gui_runnable_ms": round(rq, 1),
                "gui_asleep_ms": round(asleep, 1),
            }
        )

    def _other_cpu(self, before: dict | None) -> str:
        if before is None:
            return "not sampled"
        now, gui = schedstat(), self.main.native_id
        used = sorted(
            ((now[t][0] - v[0], t) for t, v in before.items() if t in now and t != gui),
            reverse=True,
        )
        return ", ".join(f"{now[t][1]}[{t}] {ms:.0f}" for ms, t in used[:4] if ms >= 2) or "none"

    def _faulthandler_stacks(self) -> list[str]:
        """The busy threads of the last faulthandler dump, innermost 5 frames each."""
        self._dump.seek(self._dumped)
        text = self._dump.read()
        self._dumped = self._dump.tell()
        out = []
        for block in text.split("\n\n"):
            rows = [r.strip() for r in block.strip().splitlines()]
            if len(rows) < 2 or not rows[0].startswith(("Thread", "Current thread")):
                continue
            frames = [_short(r) for r in rows[1:6]]
            if busy(tuple(frames)):
                tid = re.search(r"0x([0-9a-f]+)", rows[0])
                name = f"thread {int(tid.group(1), 16) % 100000}" if tid else rows[0]
                out.append(f"  at {self.ms:.0f} ms, {name}: " + " < ".join(frames))
        return out


def _short(row: str) -> str:
    """'File "/a/b/c.py", line 12 in f' -> 'c.py:12 f'."""
    try:
        path, rest = row.split('"')[1], row.split('", line ')[1]
        line, _, func = rest.partition(" in ")
        return f"{os.path.basename(path)}:{line} {func}"
    except IndexError:
        return row
