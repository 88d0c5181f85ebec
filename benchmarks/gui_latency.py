"""The dock's felt latency in a real napari viewer (issue 16), in one run of a few minutes.

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/gui_latency.py --json

A real viewer with the CA-SAM dock (default runtime, LiteMedSAM) on the bundled CT spleen
sample (29 slices). Boxes are added to the dock's boxes layer (``Shapes.add_rectangles``, what a
drag does) and timed from that Shapes event to the first canvas draw after the masks layer was
written. Keys (medians; ms):

- gui_box_cached_ms: a box on a slice already embedded (the slice in view after routing).
- gui_box_uncached_ms: the first box on a slice never embedded (the view jumps there and the box
  is drawn at once, before routing or prefetch could start on it).
- gui_box_next_slice_ms: the first box after stepping to the neighbouring slice once the dock was
  idle for a moment (the prefetched case); ``next_slice_encoder_calls`` counts encoder images run
  for those boxes (0 when prefetch already embedded the slice).
- gui_max_block_ms: the longest the Qt event loop went without running a 5 ms heartbeat timer,
  over opening the image, loading the model, routing, boxes and preparing the volume
  (``block_ms_by_phase`` has each phase; opening the dock itself, a synchronous widget
  construction in the GUI thread followed by napari's first draw of the dock's boxes and masks
  layers, is ``dock_open_block_ms``, outside the figure).
- gui_max_block_ms_plugin: the same over the phases where the plugin works ("load model and
  route", "boxes", "routing", "prepare volume"), without "open image": napari reading the
  sample and making and drawing its first layers (``napari.components.viewer_model.open_sample``:
  imports of scipy.ndimage and pint, contrast limits, thumbnails, the first canvas draw), none of
  it the plugin's code but the sample file read.
- gui_cpu_ms_per_box: CPU time of the GUI thread itself per cached box, from the Shapes event to
  the labels drawn (the kernel's per-thread accounting): the work the GUI thread does, ours and
  napari's, which load does not lengthen the way it lengthens wall times.
- gui_cpu_ms_by_phase, phase_s: the GUI thread's CPU time and the wall time of each phase
  (the heartbeat itself costs a few ms of CPU per second).
- box_breakdown_ms: a cached box split into its parts (medians of the per-box steps).
- threads_by_nice: at the end, the process's threads per nice value (the dock's workers and the
  compute threads they start run nicer than the GUI thread: ``napari_casam._jobs.yield_to_gui``).

``--bare`` runs the same session in napari alone: the dock's two layers are added by napari
(phase "open dock"), each box is a rectangle added and the ground truth inside it painted into
the labels layer at once (no model), the view is scrolled the same way. Its blocks and GUI CPU
are napari's own under llvmpipe; the difference to a plugin run under the same load is ours.
The boxes on other slices (each after a jump of the view) are their own phase,
"boxes, other slices", in both runs.

``--stacks MS`` prints, for every block over MS ms, what each thread was doing
(``benchmarks/_blocks.py``) and adds ``block_reports``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_API", "pyqt6")  # the napari extra's binding, where PyQt5 lingers too

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STEPS = (
    ("event", "handler"),  # Shapes event -> the dock's handler
    ("handler", "submitted"),  # boxes read, job queued and its worker started
    ("submitted", "worker"),  # the worker thread runs the job
    ("worker", "embedded"),  # set_image: cache look-up (or encoder) and routing
    ("embedded", "predicted"),  # Predictor.predict: routing, decoder, upscaling
    ("predicted", "gui"),  # the result reaches the GUI thread
    ("gui", "written"),  # masks written into the Labels layer (one undo step)
    ("written", "done"),  # the rest of the callback (box labels, status, route card)
    ("done", "drawn"),  # the canvas draws the new labels
)


#: The phases of ``gui_max_block_ms_plugin``: where the plugin's own code runs.
PLUGIN_PHASES = (
    "load model and route",
    "boxes",
    "boxes, other slices",
    "routing",
    "prepare volume",
)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


class Heartbeat:
    """A 5 ms QTimer in the GUI thread; records the longest gap between its ticks per phase."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.phase = "start"
        self.gaps: dict[str, float] = {}
        self.longest: list[tuple[float, str, float]] = []
        """The longest blocks: (ms, phase, seconds into the session when it ended)."""
        self.t0 = self._last = time.perf_counter()
        self.cpu: dict[str, float] = {}
        """GUI-thread CPU ms per phase (``time.thread_time``): load stretches it far less."""
        self._cpu0 = gui_cpu_ms()
        self.wall: dict[str, float] = {}
        self._wall0 = self.t0
        self.on_tick: list = []
        """Called in the GUI thread after each tick with (gap ms, phase the gap belongs to)."""
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000.0 - 5.0
        self.gaps[self.phase] = max(self.gaps.get(self.phase, 0.0), gap)
        self._last = now
        if gap > 50:
            self.longest = sorted([*self.longest, (gap, self.phase, now - self.t0)])[-8:]
        for hook in self.on_tick:
            hook(gap, self.phase)

    def enter(self, phase: str) -> None:
        self._tick()
        now = gui_cpu_ms()
        self.cpu[self.phase] = self.cpu.get(self.phase, 0.0) + now - self._cpu0
        self._cpu0 = now
        t = time.perf_counter()
        self.wall[self.phase] = self.wall.get(self.phase, 0.0) + t - self._wall0
        self._wall0 = t
        self.phase = phase


def spin(until, timeout: float = 600.0) -> None:
    """Run the Qt event loop (``QEventLoop.exec``, as napari's own loop runs) until ``until()``
    is true; a 2 ms timer checks it. ``processEvents`` in a Python loop is not used: it can
    leave timers (the heartbeat) unserved for seconds and so report blocks that never were."""
    from qtpy.QtCore import QEventLoop, QTimer

    if until():
        return
    loop = QEventLoop()
    end = time.perf_counter() + timeout
    failed: list[bool] = []

    def check() -> None:
        if until():
            loop.quit()
        elif time.perf_counter() > end:
            failed.append(True)
            loop.quit()

    timer = QTimer()
    timer.setInterval(2)
    timer.timeout.connect(check)
    timer.start()
    loop.exec_()
    timer.stop()
    if failed:
        raise TimeoutError("the dock did not finish in time")


def pause(seconds: float) -> None:
    end = time.perf_counter() + seconds
    spin(lambda: time.perf_counter() >= end)


class Probe:
    """Timestamps of one box's way through the dock (wraps the dock's objects from outside)."""

    def __init__(self, widget, canvas) -> None:
        import napari_casam._model.dock as dock_mod

        self.t: dict[str, float] = {}
        self.draws: list[float] = []
        canvas.events.draw.connect(lambda e: self.draws.append(time.perf_counter()))
        st, jobs, session = widget.state, widget.jobs, widget.session
        self._wrap(st, "segment_new_boxes", "handler", None)
        self._wrap(jobs, "submit", None, "submitted")
        self._wrap(st, "_on_segmented", "gui", "done")
        labels = dock_mod.L

        class _L:  # the dock reaches write_masks as L.write_masks
            def __getattr__(_, name):
                return getattr(labels, name)

            def write_masks(_, *a, **k):
                out = labels.write_masks(*a, **k)
                self.t["written"] = time.perf_counter()
                return out

        dock_mod.L = _L()
        orig_job = session.job_segment

        def job_segment(*a, **k):
            self.t["worker"] = time.perf_counter()
            return (yield from orig_job(*a, **k))

        session.job_segment = job_segment
        p = session.predictor
        self._wrap(p, "set_image", None, "embedded", needs="worker")  # routing calls it too
        self._wrap(p, "predict", None, "predicted", needs="worker")

    def _wrap(self, obj, name: str, before: str | None, after: str | None, needs: str = "") -> None:
        orig = getattr(obj, name)

        def wrapped(*a, **k):
            if before:
                self.t.setdefault(before, time.perf_counter())
            out = orig(*a, **k)
            if after and (not needs or needs in self.t):
                self.t.setdefault(after, time.perf_counter())
            return out

        setattr(obj, name, wrapped)

    def box(self, widget, rect) -> dict[str, float]:
        """Add one rectangle, wait for its labels to be drawn; the step times in ms."""
        cpu0 = gui_cpu_ms()
        self.t = {"event": time.perf_counter()}
        widget.prompts_layer().add_rectangles([rect])
        spin(lambda: "done" in self.t)
        spin(lambda: any(d >= self.t["done"] for d in self.draws), timeout=5)
        self.t["drawn"] = next(d for d in self.draws if d >= self.t["done"])
        t = self.t
        out = {f"{a}->{b}": (t[b] - t[a]) * 1000.0 for a, b in STEPS if a in t and b in t}
        out["total"] = (t["drawn"] - t["event"]) * 1000.0
        out["gui_cpu"] = gui_cpu_ms() - cpu0
        return out


def gui_cpu_ms() -> float:
    """CPU time of the calling (GUI) thread so far, ms."""
    return time.thread_time() * 1000.0


def threads_by_nice() -> dict[str, int]:
    """How many of this process's threads run at each nice value (Linux; empty elsewhere)."""
    out: dict[str, int] = {}
    tasks = Path("/proc/self/task")
    for d in tasks.iterdir() if tasks.is_dir() else ():
        try:
            nice = (d / "stat").read_text().rsplit(")", 1)[1].split()[16]
        except (OSError, IndexError):
            continue
        out[nice] = out.get(nice, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def rect_for(mask2d, index: int, margin: float):
    import numpy as np

    rows = np.flatnonzero(mask2d.any(1))
    cols = np.flatnonzero(mask2d.any(0))
    r0, r1, c0, c1 = rows[0] - margin, rows[-1] + margin, cols[0] - margin, cols[-1] + margin
    return np.array([[index, r0, c0], [index, r0, c1], [index, r1, c1], [index, r1, c0]], float)


class Encoder:
    """Counts images through the encoder runtime (as speed.py's EncoderCounter)."""

    def __init__(self, backbone) -> None:
        self.calls = 0
        rt = backbone.runtime
        if rt is None:
            return
        orig = rt.embed

        def embed(x):
            self.calls += int(x.shape[0])
            return orig(x)

        rt.embed = embed


def idle(widget) -> bool:
    prefetch = getattr(widget.state, "prefetch", None)
    return not widget.busy and not (prefetch is not None and prefetch.busy)


def open_viewer(hb: Heartbeat):
    viewer = hb.viewer
    hb.enter("open image")
    viewer.open_sample("napari-casam", "ct_spleen")
    pause(0.5)
    hb.enter("open dock")
    _, widget = viewer.window.add_plugin_dock_widget("napari-casam", "CA-SAM")
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    drawn: list[float] = []
    canvas.events.draw.connect(lambda e: drawn.append(time.perf_counter()))
    spin(lambda: bool(drawn))  # napari's first draw of the dock's boxes and masks layers
    hb.enter("load model and route")
    spin(lambda: idle(widget) and widget.session.predictor is not None)
    pause(1.0)
    spin(lambda: idle(widget))
    return viewer, widget


def show(viewer, widget, z: int) -> None:
    widget.layers.show_plane(widget.image_layer, (z,))


def measure(args) -> dict:
    import napari

    viewer = napari.Viewer(show=True)  # the QApplication first: a timer needs its event loop
    pause(0.5)
    hb = Heartbeat()
    hb.viewer = viewer
    sampler = None
    if args.stacks:
        from _blocks import BlockSampler

        sampler = BlockSampler(hb, args.stacks, log)
    t0 = time.perf_counter()
    viewer, widget = open_viewer(hb)
    gt = next(ly for ly in viewer.layers if ly.name.endswith("ground truth")).data
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    probe = Probe(widget, canvas)
    enc = Encoder(widget.session.predictor.backbone)
    start = widget.current_index()[0]
    rows: dict[str, list] = {"cached": [], "uncached": [], "next": []}

    hb.enter("boxes")
    for k in range(args.boxes):  # cached: the slice in view was embedded by routing
        rows["cached"].append(probe.box(widget, rect_for(gt[start], start, 2.0 + k)))
        pause(0.3)
    before = enc.calls
    hb.enter("boxes, other slices")
    for z in uncached_slices(start, gt.shape[0], args.slices):
        show(viewer, widget, z)  # jump, then draw at once: nothing embedded this slice yet
        rows["uncached"].append(probe.box(widget, rect_for(gt[z], z, 3.0)))
        spin(lambda: idle(widget))
        pause(args.dwell)  # the user looks at the slice: prefetch may run
        spin(lambda: idle(widget))
        nz = z + 1
        show(viewer, widget, nz)
        calls = enc.calls
        rows["next"].append(probe.box(widget, rect_for(gt[nz], nz, 3.0)))
        rows["next"][-1]["encoder_calls"] = enc.calls - calls
        spin(lambda: idle(widget))
    uncached_calls = enc.calls - before

    hb.enter("routing")
    for z in range(gt.shape[0] - 1, -1, -3):  # scrolling through the volume
        show(viewer, widget, z)
        pause(0.05)
    spin(lambda: idle(widget))
    hb.enter("prepare volume")
    widget.prepare_volume()
    spin(lambda: idle(widget))
    hb.enter("end")
    out = summary(rows, hb, enc, uncached_calls)
    out["session_s"] = round(time.perf_counter() - t0, 1)
    if sampler is not None:
        out["block_reports"] = sampler.reports
    viewer.close()
    return out


class BareProbe:
    """A box without the plugin: napari's part of it alone (``--bare``).

    The same rectangle is added to a Shapes layer like the dock's, and the same slice's ground
    truth inside it is painted into a Labels layer like the dock's masks as one undo step, as
    ``napari_casam._model.labels.write_masks`` does (``data_setitem`` in ``block_history``), as
    soon as napari has drawn the rectangle (the dock's masks come after that draw too); timed
    to the first canvas draw after the paint.
    """

    def __init__(self, viewer, shapes, labels, gt, canvas) -> None:
        self.viewer, self.shapes, self.labels, self.gt = viewer, shapes, labels, gt
        self.draws: list[float] = []
        canvas.events.draw.connect(lambda e: self.draws.append(time.perf_counter()))

    def box(self, rect) -> dict[str, float]:
        import numpy as np

        cpu0 = gui_cpu_ms()
        t = {"event": time.perf_counter()}
        self.shapes.add_rectangles([rect])
        t["handler"] = time.perf_counter()
        spin(lambda: any(d >= t["handler"] for d in self.draws), timeout=5)  # the box drawn
        t["box drawn"] = time.perf_counter()
        z = int(rect[0, 0])
        r0, c0 = (max(int(v), 0) for v in rect[0, 1:])
        r1, c1 = (int(v) + 1 for v in rect[2, 1:])
        inside = np.zeros(self.gt.shape[1:], bool)
        inside[r0:r1, c0:c1] = True
        rows, cols = np.nonzero(inside & (self.gt[z] > 0))
        self.n = getattr(self, "n", 0) + 1  # a new label every box: the paint always changes
        with self.labels.block_history():
            self.labels.data_setitem((np.full(rows.size, z), rows, cols), self.n)
        t["done"] = time.perf_counter()
        spin(lambda: any(d >= t["done"] for d in self.draws), timeout=5)
        t["drawn"] = next(d for d in self.draws if d >= t["done"])
        return {
            "event->handler": (t["handler"] - t["event"]) * 1000.0,
            "handler->box drawn": (t["box drawn"] - t["handler"]) * 1000.0,
            "box drawn->done": (t["done"] - t["box drawn"]) * 1000.0,
            "done->drawn": (t["drawn"] - t["done"]) * 1000.0,
            "total": (t["drawn"] - t["event"]) * 1000.0,
            "gui_cpu": gui_cpu_ms() - cpu0,
        }


def measure_bare(args) -> dict:
    """The same session without the plugin: napari's own blocks (see :class:`BareProbe`)."""
    import napari

    from napari_casam import _prompts

    viewer = napari.Viewer(show=True)
    pause(0.5)
    hb = Heartbeat()
    if args.stacks:
        from _blocks import BlockSampler

        sampler = BlockSampler(hb, args.stacks, log)
    t0 = time.perf_counter()
    hb.enter("open image")
    viewer.open_sample("napari-casam", "ct_spleen")
    pause(0.5)
    hb.enter("open dock")  # the dock's two layers, made by napari alone
    image = next(ly for ly in viewer.layers if _prompts.is_user_image(ly))
    labels = _prompts.make_masks(viewer, image)
    shapes = _prompts.make_prompts(viewer, image)
    viewer.layers.selection.active = shapes
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    drawn: list[float] = []
    canvas.events.draw.connect(lambda e: drawn.append(time.perf_counter()))
    spin(lambda: bool(drawn))
    hb.enter("load model and route")
    pause(1.0)
    gt = next(ly for ly in viewer.layers if ly.name.endswith("ground truth")).data
    probe = BareProbe(viewer, shapes, labels, gt, canvas)
    start = int(viewer.dims.current_step[0])
    rows: dict[str, list] = {"cached": [], "uncached": [], "next": []}
    hb.enter("boxes")
    for k in range(args.boxes):
        rows["cached"].append(probe.box(rect_for(gt[start], start, 2.0 + k)))
        pause(0.3)
    hb.enter("boxes, other slices")
    for z in uncached_slices(start, gt.shape[0], args.slices):
        viewer.dims.set_current_step(0, z)
        rows["uncached"].append(probe.box(rect_for(gt[z], z, 3.0)))
        pause(args.dwell)
        viewer.dims.set_current_step(0, z + 1)
        rows["next"].append(probe.box(rect_for(gt[z + 1], z + 1, 3.0)))
        rows["next"][-1]["encoder_calls"] = 0
    hb.enter("routing")
    for z in range(gt.shape[0] - 1, -1, -3):
        viewer.dims.set_current_step(0, z)
        pause(0.05)
    hb.enter("prepare volume")
    pause(1.0)
    hb.enter("end")
    out = summary(rows, hb, None, 0)
    out["bare_napari"] = True
    out["session_s"] = round(time.perf_counter() - t0, 1)
    if args.stacks:
        out["block_reports"] = sampler.reports
    viewer.close()
    return out


def uncached_slices(start: int, n: int, k: int) -> list[int]:
    """``k`` slices at least 5 from ``start`` and from each other (outside any prefetch window),
    each with a free neighbour above it."""
    out: list[int] = []
    for z in list(range(start + 6, n - 1, 6)) + list(range(start - 6, 0, -6)):
        if len(out) < k and all(abs(z - o) >= 6 for o in out):
            out.append(z)
    return out


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def summary(rows: dict, hb: Heartbeat, enc: Encoder | None, uncached_calls: int) -> dict:
    cached = rows["cached"]
    phases = {k: round(v, 1) for k, v in hb.gaps.items() if k not in ("start", "end")}
    steps = [f"{a}->{b}" for a, b in STEPS] + ["handler->box drawn", "box drawn->done"]
    return {
        "gui_box_cached_ms": med(r["total"] for r in cached),
        "gui_box_uncached_ms": med(r["total"] for r in rows["uncached"]),
        "gui_box_next_slice_ms": med(r["total"] for r in rows["next"]),
        "gui_max_block_ms": max(v for k, v in phases.items() if k != "open dock"),
        "gui_max_block_ms_plugin": max(v for k, v in phases.items() if k in PLUGIN_PHASES),
        "dock_open_block_ms": phases.get("open dock"),
        "gui_cpu_ms_per_box": med(r["gui_cpu"] for r in cached),
        "block_ms_by_phase": phases,
        "gui_cpu_ms_by_phase": {
            k: round(v, 1) for k, v in hb.cpu.items() if k not in ("start", "end")
        },
        "phase_s": {k: round(v, 2) for k, v in hb.wall.items() if k not in ("start", "end")},
        "longest_blocks": [
            {"ms": round(g, 1), "phase": p, "at_s": round(t, 1)} for g, p, t in hb.longest[::-1]
        ],
        "box_breakdown_ms": {s: med(r.get(s) for r in cached) for s in steps if s in cached[0]},
        "box_breakdown_uncached_ms": {
            s: med(r.get(s) for r in rows["uncached"]) for s in steps if s in cached[0]
        },
        "next_slice_encoder_calls": [r["encoder_calls"] for r in rows["next"]],
        "uncached_phase_encoder_calls": uncached_calls,
        "boxes_cached": [round(r["total"], 1) for r in cached],
        "boxes_uncached": [round(r["total"], 1) for r in rows["uncached"]],
        "boxes_next_slice": [round(r["total"], 1) for r in rows["next"]],
        "encoder_calls_total": enc.calls if enc is not None else 0,
        "gui_cpu_ms_boxes_cached": [round(r["gui_cpu"], 1) for r in cached],
        "threads_by_nice": threads_by_nice(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--boxes", type=int, default=8, help="boxes on a cached slice")
    ap.add_argument("--slices", type=int, default=3, help="uncached slices (and their next)")
    ap.add_argument("--dwell", type=float, default=6.0, help="seconds looking at each slice")
    ap.add_argument(
        "--bare",
        action="store_true",
        help="the same session in napari alone (no plugin): napari's own blocks and GUI CPU",
    )
    ap.add_argument(
        "--stacks",
        type=float,
        default=0,
        metavar="MS",
        help="print what every thread did in blocks > MS ms (benchmarks/_blocks.py)",
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CASAM_HOME"] = str(Path(tmp) / "home")  # default settings, no disk cache
        os.environ["CASAM_CACHE"] = str(Path(tmp) / "embeddings")
        from _common import machine

        from napari_casam._session import guard_triton

        guard_triton()
        load = os.getloadavg()
        out = {"machine": machine(), **(measure_bare(args) if args.bare else measure(args))}
        out["load_avg_at_start"] = [round(x, 2) for x in load]
        out["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
