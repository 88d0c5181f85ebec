"""``LearnSettings.adapter = "auto"`` (the default): the Alignment Layer first, and where it gains
under ``auto_gain`` on the held-out images, decoder adapters too, the better of the two kept
and stored as a task of its own kind (tiny backbone, a few disk images)."""

from __future__ import annotations

import json

import pytest
from casam_testing import TinyBackbone, disk_images, tiny_settings

from casam import training
from casam.config import LearnSettings
from casam.errors import InputError
from casam.estimate import LearnEstimate, estimate_learn
from casam.library import META, TaskLibrary
from casam.predictor import Predictor


def learn(tmp_path, name="disks", holdout=True, extend=False, **kw):
    """Learn from 4 disk images (2 more held out unless ``holdout`` is False); returns
    (TaskInfo, the Progress stages in order without repeats, the stored task.json)."""
    images, masks = disk_images(6, seed=3)
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(tmp_path / "lib"))
    s = tiny_settings(epochs=2, batch_size=2, **kw)
    held = (images[4:], masks[4:]) if holdout else None
    gen = training.iter_learn_task(
        images[:4], masks[:4], name, predictor=p, settings=s, holdout=held, extend=extend
    )
    stages: list[str] = []
    try:
        while True:
            pr = next(gen)
            if not stages or stages[-1] != pr.stage:
                stages.append(pr.stage)
    except StopIteration as stop:
        info = stop.value
    return info, stages, json.loads((tmp_path / "lib" / name / META).read_text())


def test_little_gain_trains_decoder_adapters_too_and_keeps_the_better_on_held_out(tmp_path):
    # auto_gain 1: any gain is "little", so the second kind is always tried
    info, stages, meta = learn(tmp_path, adapter="auto", auto_gain=1.0)
    assert stages == ["embed", "align", "vae", "evaluate", "second", "evaluate", "save"]
    kinds = meta["settings"]["kind_iou"]
    assert set(kinds) == {"alignment", "decoder"}
    best = max(kinds, key=lambda k: (kinds[k], k == "alignment"))  # ties keep the first kind
    assert info.adapter == meta["adapter"] == best
    assert info.iou_task == pytest.approx(kinds[best], abs=1e-6) and info.iou_task >= info.iou_sam
    assert meta["settings"]["adapter"] == "auto"  # what was asked; ``adapter``: what was kept
    assert meta["format_version"] == (3 if best == "decoder" else 2)


def test_a_clear_gain_or_no_held_out_images_trains_one_kind_only(tmp_path):
    info, stages, meta = learn(tmp_path / "a", adapter="auto", auto_gain=0.0)
    assert "second" not in stages and info.adapter == "alignment"
    assert "kind_iou" not in meta["settings"]
    info, stages, meta = learn(tmp_path / "b", adapter="auto", auto_gain=1.0, holdout=False)
    assert "second" not in stages and info.adapter == "alignment" and info.n_holdout == 0
    info, stages, meta = learn(tmp_path / "c", adapter="alignment", auto_gain=1.0)
    assert "second" not in stages and info.adapter == "alignment"


@pytest.mark.parametrize("winner", ["alignment", "decoder"])
def test_the_kind_with_the_better_held_out_iou_is_the_one_stored(tmp_path, monkeypatch, winner):
    evaluate = training._evaluate

    def rigged(backbone, adapter, emb, hold, strengths):
        held = yield from evaluate(backbone, adapter, emb, hold, strengths)
        # plain SAM at 0.5; the winner's kind at 0.8 (every strength), the other at 0.505
        top = 0.8 if adapter.kind == winner else 0.505
        return {a: ((0.5, 0.4) if a == 0 else (top, 0.6)) for a in held}

    monkeypatch.setattr(training, "_evaluate", rigged)
    info, stages, meta = learn(tmp_path, adapter="auto", auto_gain=0.02)
    if winner == "alignment":  # a 30-point gain: no second training
        assert "second" not in stages and "kind_iou" not in meta["settings"]
    else:  # a 0.5-point gain from the Alignment Layer: decoder adapters tried, and kept
        assert meta["settings"]["kind_iou"] == {"alignment": 0.505, "decoder": 0.8}
    assert info.adapter == meta["adapter"] == winner and info.iou_task == pytest.approx(0.8)
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(tmp_path / "lib"))
    assert p.adapter("disks").kind == winner  # stored as, and loaded as, the kept kind


def test_extending_an_auto_task_keeps_its_kind_and_tries_no_second(tmp_path):
    info, _, _ = learn(tmp_path, adapter="auto", auto_gain=1.0)
    kind = info.adapter
    again, stages, meta = learn(tmp_path, adapter="auto", auto_gain=1.0, extend=True)
    assert "second" not in stages and again.adapter == meta["adapter"] == kind
    assert again.n_images == 8


def test_settings_default_paper_old_tasks_and_bad_values():
    assert LearnSettings().adapter == "auto" and LearnSettings().auto_gain == 0.02
    assert LearnSettings.paper().adapter == "alignment"
    old = {k: v for k, v in LearnSettings().to_dict().items() if k != "adapter"}
    assert LearnSettings.from_dict(old).adapter == "alignment"  # stored before "auto"
    for bad in ({"adapter": "both"}, {"auto_gain": -0.1}, {"auto_gain": 2}):
        with pytest.raises(InputError):
            LearnSettings(**bad)


def test_the_estimate_names_what_a_second_kind_would_add():
    images, _ = disk_images(1, seed=0)
    p = Predictor(backbone=TinyBackbone())
    auto = estimate_learn(p, images[0], 6, 8, 4, 2, tiny_settings(adapter="auto"))
    one = estimate_learn(p, images[0], 6, 8, 4, 2, tiny_settings(adapter="alignment"))
    none_held = estimate_learn(p, images[0], 6, 8, 4, 0, tiny_settings(adapter="auto"))
    assert auto.maybe_s > auto.evaluate_s > 0 and one.maybe_s == none_held.maybe_s == 0
    assert str(auto).endswith("more if decoder adapters are tried too")
    assert "decoder" not in str(one)
    est = LearnEstimate(1.0, 3, 0.5, 10, 2.0, 0.5, maybe_s=2.5)
    assert est.total == 3 + 5 + 2 + 0.5  # the second kind is not counted in the total
