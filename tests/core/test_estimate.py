"""casam.estimate: how long learning takes here, measured before it starts."""

from __future__ import annotations

import io

import pytest
from casam_testing import TinyBackbone, disk_images, tiny_settings

from casam.cli.learn_progress import LearnDisplay
from casam.estimate import LearnEstimate, align_steps
from casam.library import TaskLibrary
from casam.predictor import Predictor
from casam.progress import duration
from casam.training import iter_learn_task


@pytest.mark.parametrize("augment", [0, 1])
def test_the_plan_comes_first_and_counts_the_steps_the_training_takes(tmp_path, augment):
    lib = TaskLibrary(tmp_path / "lib")
    p = Predictor(backbone=TinyBackbone(), library=lib)
    images, masks = disk_images(5)
    s = tiny_settings(epochs=3, batch_size=2, augment=augment)
    events = list(iter_learn_task(images, masks, "X", predictor=p, settings=s, estimate=True))
    plan = events[0]
    assert plan.stage == "plan" and [e.stage for e in events].count("plan") == 1
    est = plan.estimate
    aligns = [e for e in events if e.stage == "align"]
    steps = 3 * -(-5 * (1 + augment) // 2)  # 5 objects (and a copy of each) / 2 x 3 epochs
    assert est.n_steps == len(aligns) == aligns[-1].total == steps
    assert est.n_embed == 5 * (1 + augment) == [e for e in events if e.stage == "embed"][-1].total
    assert min(est.embed_s, est.step_s, est.router_s) > 0 and est.total > est.step_s * steps
    assert plan.message == str(est) and "training steps" in plan.message
    assert lib.names() == ["X"]  # the probes changed nothing of the learning itself


def test_without_estimate_no_probe_runs(tmp_path):
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(tmp_path / "lib"))
    images, masks = disk_images(3)
    events = list(iter_learn_task(images, masks, "X", predictor=p, settings=tiny_settings()))
    assert "plan" not in {e.stage for e in events}


def test_steps_and_words():
    s = tiny_settings(epochs=4, batch_size=6)
    assert align_steps(13, s) == 12 and align_steps(6, s) == 4
    assert [duration(x) for x in (3.2, 400, 9000)] == ["3 s", "6.7 min", "2.5 h"]
    est = LearnEstimate(embed_s=2.0, n_embed=10, step_s=1.5, n_steps=100, router_s=8, evaluate_s=2)
    assert est.total == 20 + 150 + 8 + 2
    assert str(est).startswith("about 3.0 min on this machine (encoder 2 s x 10 images")


def test_cli_display_prints_the_estimate_once_and_keeps_it():
    from casam.training import Progress

    est = LearnEstimate(1.0, 3, 0.5, 10, 2.0, 0.5)
    out = io.StringIO()
    show = LearnDisplay(epochs=2, stream=out, tty=True)
    show(Progress("plan", 1, 1, message=str(est), estimate=est))
    show.close()
    assert out.getvalue() == f"casam learn: estimated {est}\n" and show.estimate is est
