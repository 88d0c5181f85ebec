"""What keeps the GUI thread free (issue 16, gui_max_block_ms): the job bar and the routing card
repaint only when what they show changes, and workers run nicer than the GUI thread.

Real widgets under Xvfb (paint events counted by an event filter), real napari workers; no
timing is asserted.
"""

from __future__ import annotations

import os
import threading

import pytest
from qtpy.QtCore import QEvent, QObject

from napari_casam import _jobs
from napari_casam._jobs import Job, JobQueue, yield_to_gui
from napari_casam._qt import job_bar
from napari_casam._qt.job_bar import JobBar
from napari_casam._qt.routing_card import RoutingCard
from napari_casam._texts import RouteText

pytestmark = pytest.mark.gui


class Events(QObject):
    """Counts events of some types reaching a widget."""

    def __init__(self, widget, *types) -> None:
        super().__init__()
        self.types, self.n = types, 0
        widget.installEventFilter(self)

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802 - Qt's name
        if ev.type() in self.types:
            self.n += 1
        return False


@pytest.fixture
def bar(qtbot) -> JobBar:
    w = JobBar()
    qtbot.addWidget(w)
    w.resize(420, w.sizeHint().height())  # the dock's width: a job's text is one line
    w.show()
    qtbot.waitExposed(w)
    qtbot.wait(50)
    return w


def test_a_quick_job_never_repaints_the_bar(bar, qtbot):
    paints = Events(bar.bar, QEvent.Type.Paint)
    relayouts = Events(bar, QEvent.Type.LayoutRequest)
    label_height = bar.label.height()
    bar.show_job("Segmenting…", 0, 0)  # a box on a cached slice: done within SHOW_AFTER_MS
    qtbot.wait(30)
    bar.show_job("Idle", 0, 1)
    qtbot.wait(job_bar.SHOW_AFTER_MS + 200)
    assert paints.n == 0 and relayouts.n == 0
    assert bar.bar.format() == "Idle" and bar.label.text() == ""
    assert bar.label.height() == label_height


def test_a_long_job_shows_its_text_then_the_busy_animation(bar, qtbot, monkeypatch):
    monkeypatch.setattr(job_bar, "ANIMATE_AFTER_MS", job_bar.SHOW_AFTER_MS + 300)
    label_height = bar.label.height()
    bar.show_job("Computing the image embedding…", 0, 0)
    assert bar.bar.format() == "Idle"  # not yet
    qtbot.waitUntil(lambda: bar.bar.format() == "Computing the image embedding…", timeout=3000)
    assert bar.bar.maximum() == 1  # shown without the animation first
    assert bar.label.text().startswith("Computing the image embedding…")
    qtbot.waitUntil(lambda: bar.bar.maximum() == 0, timeout=3000)  # Qt's busy bar
    qtbot.waitUntil(lambda: bar.label.text().endswith(" s)"), timeout=3000)  # time so far
    bar.show_job("Idle", 0, 1)
    assert bar.bar.format() == "Idle" and bar.bar.maximum() == 1 and bar.label.text() == ""
    qtbot.wait(50)
    assert bar.label.height() == label_height


def test_a_counted_job_shows_its_count_at_once_after_the_delay(bar, qtbot):
    bar.show_job("Embedding slice 0/6", 0, 6)
    bar.show_job("Embedding slice 1/6", 1, 6)
    assert bar.bar.value() != 1  # collapsed while the job is young
    qtbot.waitUntil(lambda: bar.bar.value() == 1, timeout=3000)
    assert bar.bar.maximum() == 6 and bar.bar.format() == "Embedding slice 1/6"
    bar.show_job("Embedding slice 4/6", 4, 6)  # from now on, every step shows at once
    assert bar.bar.value() == 4 and bar.bar.format() == "Embedding slice 4/6"


def test_the_routing_card_restyles_only_when_the_kind_changes(qtbot):
    card = RoutingCard()
    qtbot.addWidget(card)
    card.show()
    qtbot.waitExposed(card)
    styles = Events(card.headline, QEvent.Type.StyleChange, QEvent.Type.FontChange)
    task = RouteText("Task: CT spleen", "score 0.4 of threshold 1.0", "task")
    card.show_text(task, "CT · slice 3 / 28")
    qtbot.wait(20)
    first = styles.n
    sheet = card.styleSheet()
    assert first > 0 and "#2e7d32" in sheet
    card.show_text(RouteText("Task: CT spleen", "score 0.5 of threshold 1.0", "task"), "slice 4")
    qtbot.wait(20)
    assert styles.n == first and card.styleSheet() == sheet  # same kind: text only
    assert card.detail.text() == "score 0.5 of threshold 1.0" and card.where.text() == "slice 4"
    card.show_text(RouteText("SAM fallback", "no task fits", "fallback"), "slice 4")
    qtbot.wait(20)
    assert styles.n > first and "#8d6e00" in card.styleSheet()
    assert card.headline.text() == "SAM fallback"


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def expected_worker_nice() -> int:
    return min(nice_of(os.getpid()) + _jobs.worker_nice(), 19)


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities: Linux")
def test_yield_to_gui_lowers_only_the_calling_thread_and_what_it_starts():
    base = nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = nice_of(threading.get_native_id())

    def worker() -> None:
        yield_to_gui()
        yield_to_gui()  # once is enough: never nicer than the step
        seen["worker"] = nice_of(threading.get_native_id())
        t = threading.Thread(target=child)
        t.start()
        t.join()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": expected_worker_nice(), "child": expected_worker_nice()}
    assert nice_of(threading.get_native_id()) == base  # the GUI thread keeps its priority


def test_yield_to_gui_asks_the_system_for_the_step(monkeypatch):
    """The decision itself, where the process is not already at the lowest priority."""
    calls = []
    monkeypatch.setattr(_jobs.os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(_jobs.os, "setpriority", lambda *a: calls.append(a))
    monkeypatch.setattr(_jobs.sys, "platform", "linux")
    yield_to_gui()
    assert calls == [(os.PRIO_PROCESS, threading.get_native_id(), _jobs.WORKER_NICE)]
    calls.clear()
    monkeypatch.setenv("CASAM_WORKER_NICE", "0")
    yield_to_gui()
    assert calls == []


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities: Linux")
def test_a_dock_job_runs_in_a_nicer_napari_worker(qtbot):
    def job():
        yield "working"
        return threading.get_native_id(), nice_of(threading.get_native_id())

    out = []
    queue = JobQueue()
    queue.submit(Job(job, returned=out.append))
    qtbot.waitUntil(lambda: bool(out), timeout=10_000)
    tid, nice = out[0]
    assert tid != threading.get_native_id()  # a worker thread, not the GUI thread
    assert nice == expected_worker_nice()
