"""Prefetching the slices around the one in view (Qt-free model, fake engine, manual jobs)."""

from __future__ import annotations

import numpy as np
import pytest
from fake_engine import FakeLayers, FakeSession

from casam.progress import drive
from napari_casam._jobs import JobQueue
from napari_casam._model import DockModel
from napari_casam._model.prefetch import neighbours

SHAPE = (6, 40, 50)


class ManualJobs:
    """A ``JobQueue`` starter whose jobs run only when the test says (as a slow worker)."""

    def __init__(self) -> None:
        self.running: list[tuple] = []

    def __call__(self, func, *args, yielded=None, returned=None, errored=None, finished=None):
        self.running.append((func, args, yielded, returned, errored, finished))
        return None

    def step(self) -> None:
        """The running job ends (returns its value, then finishes)."""
        func, args, yielded, returned, errored, finished = self.running.pop(0)
        try:
            value = drive(func(*args), yielded)
            if returned:
                returned(value)
        except Exception as exc:  # noqa: BLE001 - as a worker hands it on
            errored(exc)
        finally:
            finished()

    def run_all(self, limit: int = 50) -> None:
        while self.running and limit:
            self.step()
            limit -= 1


@pytest.fixture
def dock(monkeypatch):
    from napari.layers import Image, Labels, Shapes

    monkeypatch.delenv("CASAM_NAPARI_NOTHREADS", raising=False)
    image = Image(np.random.default_rng(0).random(SHAPE), name="vol")
    prompts = Shapes(
        ndim=3,
        features={"box_id": np.zeros(0, int), "label": np.zeros(0, int)},
        feature_defaults={"box_id": 0, "label": 0},
    )
    layers = FakeLayers(image, Labels(np.zeros(SHAPE, np.uint16)), prompts)
    layers.index = (2,)
    manual = ManualJobs()
    model = DockModel(FakeSession(), layers, JobQueue(starter=manual))
    model.notify = lambda kind, msg: None
    model.manual = manual
    model.bind(image)
    return model


def step_until_prefetching(model, index) -> None:
    """Run jobs until the running one is prefetching plane ``index``."""
    for _ in range(20):
        func, args = model.manual.running[0][:2]
        if getattr(func, "__name__", "") == "job_prefetch" and args[1] == index:
            return
        model.manual.step()
    raise AssertionError(f"plane {index} was never prefetched")


def calls(model, kind: str | None = None) -> list[tuple]:
    return [c for c in model.session.calls if kind is None or c[0] == kind]


def test_neighbours_nearest_first_inside_the_volume():
    assert neighbours((5,), (29,)) == [(5,), (6,), (4,), (7,), (3,)]
    assert neighbours((0,), (29,)) == [(0,), (1,), (2,)]
    assert neighbours((28,), (29,), window=1) == [(28,), (27,)]
    assert neighbours((1, 3), (2, 5)) == [(1, 3), (1, 4), (1, 2), (1, 1)]  # the slider's axis
    assert neighbours((), ()) == [] and neighbours((4,), (9,), window=0) == []


def test_looking_at_a_slice_embeds_its_neighbours_after_routing(dock):
    dock.update_route()
    assert dock.jobs.busy  # routing is the user's job
    dock.manual.run_all()
    assert calls(dock) == [("route", (2,)), ("prefetch", (3,)), ("prefetch", (1,))] + [
        ("prefetch", (4,)),
        ("prefetch", (0,)),
    ]  # the slice in view was embedded by routing: no second encoder call for it
    assert dock.prefetch.embedded == [(3,), (1,), (4,), (0,)]
    assert not dock.prefetch.busy and not dock.jobs.busy


def test_prefetch_does_not_make_the_dock_busy(dock):
    idle = []
    dock.jobs.busy_changed.connect(idle.append)
    dock.update_route()
    dock.manual.step()  # routing done, the first prefetch job runs
    assert idle == [True, False]
    assert not dock.jobs.busy and dock.jobs.background_busy and dock.prefetch.busy


def test_a_box_goes_before_the_next_prefetch_job(dock):
    from test_dock_model import rect

    dock.update_route()
    step_until_prefetching(dock, (3,))  # routing of slice 2 ended: slice 3 is being embedded
    prompts = dock.layers.layers["prompts"]
    prompts.add_rectangles([rect(2, 5, 5, 15, 20)])
    dock.segment_new_boxes(prompts, dock.image)
    dock.manual.step()  # slice 3 embedded; the box is next, not slice 1
    assert calls(dock)[-1] == ("prefetch", (3,))
    dock.manual.step()
    assert calls(dock)[-1] == ("segment", (2,), 1, "auto")
    assert (dock.layers.layers["masks"].data[2, 5:16, 5:21] == 1).all()
    dock.manual.run_all()
    assert [c[1] for c in calls(dock, "prefetch")] == [(3,), (1,), (4,), (0,)]


def test_moving_on_retargets_the_prefetch(dock):
    dock.update_route()
    step_until_prefetching(dock, (3,))
    dock.layers.index = (5,)
    dock.update_route()  # the user moved to slice 5
    dock.manual.run_all()
    assert calls(dock) == [
        ("route", (2,)),
        ("prefetch", (3,)),  # was running: it finishes
        ("route", (5,)),
        ("prefetch", (4,)),  # 5's neighbours only: 1, 0 of the old plan are dropped
    ]
    assert dock.session.cached == {(2,), (3,), (4,), (5,)}  # 6 and 7 lie outside the volume


def test_another_image_or_closing_cancels_the_prefetch(dock):
    dock.update_route()
    step_until_prefetching(dock, (3,))
    dock.bind(None)
    dock.manual.run_all()
    assert [c[1] for c in calls(dock, "prefetch")] == [(3,)]
    dock.bind(dock.layers.layers["image"])
    dock.update_route()
    step_until_prefetching(dock, (1,))
    dock.close()
    dock.manual.run_all()
    assert [c[1] for c in calls(dock, "prefetch")] == [(3,), (1,)]  # the running one ends


def test_cancel_stops_the_prefetch_too(dock):
    dock.update_route()
    step_until_prefetching(dock, (3,))
    dock.cancel_jobs()  # the job bar's Cancel (and closing the dock's jobs)
    dock.manual.run_all()
    assert [c[1] for c in calls(dock, "prefetch")] == [(3,)] and not dock.prefetch.busy


def test_no_prefetch_when_jobs_run_synchronously(monkeypatch, dock):
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    model = DockModel(FakeSession(), dock.layers)
    model.bind(dock.layers.layers["image"])
    model.update_route()
    assert calls(model) == [("route", (2,))]  # nothing left running behind the caller
