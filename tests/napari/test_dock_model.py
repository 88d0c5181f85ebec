"""The dock's Qt-free model with a fake engine: no display, no model, milliseconds each."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fake_engine import FakeLayers, FakeProgress, FakeRoute, FakeSession

from napari_casam import _texts
from napari_casam._model import DockModel, LearnModel
from napari_casam._model.boxes import group_new_boxes, interpolation_pair

SHAPE = (6, 40, 50)


def rect(k, r0, c0, r1, c1):
    return np.array([[k, r0, c0], [k, r0, c1], [k, r1, c1], [k, r1, c0]], float)


@pytest.fixture
def dock(monkeypatch):
    """A model over a 6-slice image, its masks and boxes layers, and a fake engine."""
    from napari.layers import Image, Labels, Shapes

    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    image = Image(np.random.default_rng(0).random(SHAPE), name="vol")
    masks = Labels(np.zeros(SHAPE, np.uint16))
    prompts = Shapes(
        ndim=3,
        features={"box_id": np.zeros(0, int), "label": np.zeros(0, int)},
        feature_defaults={"box_id": 0, "label": 0},
    )
    layers = FakeLayers(image, masks, prompts)
    layers.index = (2,)
    model = DockModel(FakeSession(), layers)
    model.notices = []
    model.notify = lambda kind, msg: model.notices.append((kind, msg))
    model.shown = []
    model.route_changed.connect(lambda text, where: model.shown.append((text, where)))
    model.bind(image)
    return model


def draw(model, *rects):
    prompts = model.layers.layers["prompts"]
    prompts.add_rectangles(list(rects))
    return model.segment_new_boxes(prompts, model.image)


def test_boxes_become_labels_grouped_per_plane(dock):
    queued = draw(
        dock,
        rect(2, 5, 5, 15, 20),
        rect(2, 25, 30, 35, 45),
        rect(4, 10, 10, 20, 20),
        rect(2, 100, 100, 120, 120),  # off the image
    )
    assert queued == 3
    segment_calls = [c for c in dock.session.calls if c[0] == "segment"]
    assert [(c[1], c[2]) for c in segment_calls] == [((2,), 2), ((4,), 1)]
    lab = dock.layers.layers["masks"].data
    assert (lab[2, 5:16, 5:21] == 1).all() and (lab[2, 25:36, 30:46] == 2).all()
    assert (lab[4, 10:21, 10:21] == 3).all()
    assert lab[[0, 1, 3, 5]].sum() == 0
    feats = dock.layers.layers["prompts"].features
    assert feats["box_id"].tolist() == [1, 2, 3, 4]
    assert feats["label"].tolist() == [1, 2, 3, -1]
    assert dock.notices == [("info", "1 shape(s) ignored: draw rectangles inside the image.")]
    assert dock.status.startswith("1 mask with plain SAM")


def test_a_box_redrawn_over_an_object_replaces_its_mask(dock):
    draw(dock, rect(2, 5, 5, 15, 20), rect(2, 25, 30, 35, 45))
    lab = dock.layers.layers["masks"].data
    draw(dock, rect(2, 8, 8, 14, 18))  # inside object 1: refines it
    assert (lab[2, 8:15, 8:19] == 1).all() and (lab[2] == 1).sum() == 7 * 11
    assert (lab[2] == 2).sum() == 11 * 16  # the other object is untouched
    assert "1 mask replaced" in dock.status and dock.status.startswith("0 masks")
    assert dock.layers.layers["prompts"].features["label"].tolist()[-1] == 1
    draw(dock, rect(2, 14, 19, 26, 31))  # touches both objects a little: a new object
    assert set(np.unique(lab[2])) == {0, 1, 2, 3}
    dock.undo()
    assert set(np.unique(lab[2])) == {0, 1, 2}


def test_a_box_over_empty_air_is_kept_but_flagged(dock):
    dock.session.scores = {0: 0.2}
    draw(dock, rect(2, 5, 5, 15, 20))
    assert dock.layers.layers["masks"].data[2].any()  # kept
    assert "low confidence: check this mask" in dock.status
    assert dock.notices[-1] == ("warning", "low confidence: check this mask")
    dock.session.scores = {}
    draw(dock, rect(2, 25, 30, 35, 45))
    assert "low confidence" not in dock.status


def test_group_new_boxes_keeps_ids_of_old_boxes():
    verts = [rect(1, 0, 0, 5, 5), rect(1, 2, 2, 9, 9), rect(3, 0, 0, 5, 5)]
    out = group_new_boxes(np.array([7, 0, 0]), ["rectangle", "ellipse", "rectangle"], verts, SHAPE)
    assert out.ids == {1: 8, 2: 9}
    assert out.rejected == [1]
    assert [(p.index, p.ids) for p in out.planes] == [((3,), [9])]


def test_undo_removes_the_last_segmentation_and_its_box(dock):
    draw(dock, rect(2, 5, 5, 15, 20))
    draw(dock, rect(2, 25, 30, 35, 45))
    masks, prompts = dock.layers.layers["masks"], dock.layers.layers["prompts"]
    assert set(np.unique(masks.data)) == {0, 1, 2}
    assert dock.undo()
    assert set(np.unique(masks.data)) == {0, 1}
    assert len(prompts.data) == 1 and prompts.features["label"].tolist() == [1]
    dock.redo()
    assert set(np.unique(masks.data)) == {0, 1, 2}


def test_undo_of_an_edit_on_another_slice_moves_the_view_there(dock):
    draw(dock, rect(4, 5, 5, 15, 20))
    assert dock.layers.index == (2,)
    assert dock.undo()
    assert not dock.layers.layers["masks"].data.any()
    assert dock.layers.index == (4,)  # the user sees what the undo changed
    assert dock.status == "Undid an edit on slice 4 / 5: the view moved there."


def test_routing_state_is_one_value_shown_on_the_card(dock):
    task = FakeRoute("CT spleen", 0.01, 0.02, False)
    dock.session.route_for[(2,)] = task
    dock.update_route()
    assert dock.route.decision is task and dock.route.index == (2,)
    text, where = dock.shown[-1]
    assert (text.headline, text.kind) == ("CT spleen", "task")
    assert where == "vol · slice 2 / 5"
    dock.set_override("sam")
    assert dock.shown[-1][0].headline == "Plain SAM (your choice)"
    dock.set_override("auto")
    # a result for a slice no longer in view does not replace the card
    dock.session.route_for[(4,)] = FakeRoute(None, 0.5, 0.02, True, best="CT spleen")
    dock.layers.index = (4,)
    dock.update_route()
    dock.layers.index = (2,)
    assert dock.route.decision.fallback and dock.route.index == (4,)
    # an engine error is shown quietly, on the card
    from casam.errors import InputError

    dock.session.route_for[(2,)] = InputError("image is empty")
    dock.update_route()
    assert dock.shown[-1][0].headline == "Not routed" and "empty" in dock.shown[-1][0].detail
    assert not dock.notices


def test_forced_segmentation_keeps_the_routers_own_decision(dock):
    task = FakeRoute("CT spleen", 0.01, 0.02, False)
    dock.session.route_for[(2,)] = task
    dock.set_override("sam")
    draw(dock, rect(2, 5, 5, 15, 20))
    assert dock.session.calls[-1][-1] == "sam"
    assert dock.route.decision is task  # the worker's result, not the predictor's state


def test_fallback_text_says_the_closest_task_was_rejected(dock):
    dock.session.route_for[(2,)] = FakeRoute(None, 0.06, 0.01, True, best="MR brain")
    dock.update_route()
    text = dock.shown[-1][0]
    assert text.headline == "SAM fallback" and text.kind == "fallback"
    assert (
        text.detail
        == "Unlike every learned task: the closest, MR brain, scores 6.0x its threshold."
    )


def test_card_shows_the_score_as_a_share_of_the_threshold_and_the_runner_up(dock):
    dock.session.route_for[(2,)] = FakeRoute(
        "CT spleen", 0.031, 0.05, False, best="CT spleen", runner_up="CT liver", runner_up_ratio=1.4
    )
    dock.update_route()
    text = dock.shown[-1][0]
    assert (text.headline, text.kind) == ("CT spleen", "task")
    assert text.detail == (
        "Its images look like this one (score 62% of its threshold); "
        "runner-up CT liver at 140% of its threshold."
    )
    dock.session.route_for[(3,)] = FakeRoute(
        None, 0.3, 0.1, True, best="CT liver", runner_up="MR liver", runner_up_ratio=12.0
    )
    dock.layers.index = (3,)
    dock.update_route()
    text = dock.shown[-1][0]
    assert text.kind == "fallback" and text.detail == (
        "Unlike every learned task: the closest, CT liver, scores 3.0x its threshold; "
        "runner-up MR liver at 12x its threshold."
    )


def test_interpolation_pair_rules():
    idx = [(1,), (1,), (4,), (6,)]
    labels = np.array([1, 2, 3, 0])
    ids = np.array([1, 2, 3, 4])
    assert interpolation_pair([], labels, ids, idx) == (1, 2)  # last two segmented, 2 planes
    assert interpolation_pair([3, 0], labels, ids, idx) == (0, 3)  # the two selected
    assert interpolation_pair([], np.array([1, 2, 0, 0]), ids, idx) is None  # one plane only


def test_interpolate_fills_the_slices_between_as_one_object_in_one_undo_step(dock):
    draw(dock, rect(1, 5, 5, 15, 15))
    draw(dock, rect(4, 11, 11, 21, 31))
    masks = dock.layers.layers["masks"]
    assert dock.interpolate()
    lab = masks.data
    assert set(np.unique(lab)) == {0, 1}
    assert all(lab[k].any() for k in (1, 2, 3, 4)) and not lab[[0, 5]].any()
    assert (lab[2, 7:18, 7:21] == 1).all()  # a third of the way from box a to box b
    assert "Interpolated 2 slices as label 1" in dock.status
    dock.undo()
    assert set(np.unique(masks.data)) == {0, 1, 2} and not masks.data[[2, 3]].any()


def test_interpolate_needs_boxes_on_two_slices(dock):
    draw(dock, rect(2, 5, 5, 15, 15))
    assert not dock.interpolate()
    assert dock.notices[-1][1].startswith("Draw a box around the structure on two")


def test_prepare_volume_counts_slices(dock):
    seen = []
    dock.job_changed.connect(lambda text, done, total: seen.append((text, done, total)))
    assert dock.prepare_volume()
    assert ("Embedding slice 6/6", 6, 6) in seen
    assert dock.status.startswith("Volume prepared: 6 slices embedded")


def labels_for(image_shape, slices):
    from napari.layers import Image, Labels

    lab = np.zeros(image_shape, np.uint8)
    for k in slices:
        lab[k, 10:20, 10:20] = 1
    return Image(np.ones(image_shape)), Labels(lab, name="corrected")


def test_learn_refuses_bad_requests_and_runs_to_the_end(monkeypatch):
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    session = FakeSession(names=["CT spleen"])
    model = LearnModel(session)
    model.notify = lambda kind, msg: None
    image, labels = labels_for(SHAPE, [])
    assert "name" in model.check("", "new", image, labels)
    assert "exists" in model.check("CT spleen", "new", image, labels)
    assert "no task" in model.check("Liver", "extend", image, labels).lower()
    assert not model.start("Liver", "new", image, labels, epochs=5)
    assert "no labels yet" in model.last_error
    image, labels = labels_for(SHAPE, [1, 3])
    states, progress, learned, messages = [], [], [], []
    model.message.connect(messages.append)
    model.state_changed.connect(states.append)
    model.progress.connect(lambda text, v, n: progress.append(text))
    model.learned.connect(learned.append)
    assert model.start("Liver", "new", image, labels, epochs=5)
    assert states == [True, False] and not model.running
    assert any(
        t.startswith("Training the Alignment Layer · epoch 2 of 5 · loss 0.250 · 2/5 · about")
        and t.endswith(" left")
        for t in progress
    ), progress
    assert [i.name for i in learned] == ["Liver"] and session.saved == ["Liver"]
    assert messages[:2] == [  # the estimate comes before any training
        "Learning “Liver” from 2 annotated images…",
        "Learning “Liver” from 2 annotated images… Estimated time: about 9 s on this machine.",
    ]


def test_learn_summary_says_the_expected_gain_from_the_tasks_held_out_slices(monkeypatch):
    """The summary after learning: held-out IoU of SAM and the task, then the gain in IoU
    points for the number of training slices (the fake task: 3 slices, 0.5 -> 0.9)."""
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    model = LearnModel(FakeSession())
    notes, messages = [], []
    model.notify = lambda kind, msg: notes.append(msg)
    model.message.connect(messages.append)
    image, labels = labels_for(SHAPE, [1, 3])
    assert model.start("Liver", "new", image, labels, epochs=2)
    head, gain = messages[-1].split("\n")
    assert head.startswith("Learned “Liver” from 3 images") and "SAM 0.50 → task 0.90" in head
    assert gain == "Expected gain on held-out slices: +40.0 IoU points (learning curve: 3 slices)."
    assert notes[-1] == messages[-1]


def test_learn_summary_says_when_learning_kept_the_layer_below_its_trained_strength():
    from fake_engine import FakeInfo

    full = _texts.describe_result(FakeInfo("Nuclei", settings={"strength": 1.0}), 4.0)
    assert "strength" not in full and "uses plain SAM" not in full
    half = _texts.describe_result(FakeInfo("Nuclei", settings={"strength": 0.5}), 4.0)
    assert "kept at 50% of its trained strength" in half.split("\n")[0]
    none = FakeInfo("Nuclei", iou_sam=0.8, iou_task=0.8, settings={"strength": 0.0})
    head, gain = _texts.describe_result(none, 4.0).split("\n")
    assert head.endswith("so the task uses plain SAM.") and gain.startswith("No gain")


def test_learn_summary_says_when_a_task_does_not_help_yet_or_was_not_measured():
    from fake_engine import FakeInfo

    worse = FakeInfo("Lesion", n_images=1, iou_sam=0.62, iou_task=0.615)
    line = _texts.describe_result(worse, 4.0).split("\n")[1]
    assert line.startswith(
        "No gain on held-out slices yet (-0.5 IoU points, learning curve: 1 slice)"
    )
    assert "correct more slices" in line
    unmeasured = _texts.describe_result(FakeInfo("Lesion", iou_sam=None, iou_task=None), 4.0)
    assert "\n" not in unmeasured and unmeasured.endswith("so no IoU was measured.")


def test_the_adapter_choice_reaches_learn_settings_and_its_words(monkeypatch):
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    session = FakeSession(names=["MR tumour"], kinds={"MR tumour": "decoder"})
    model = LearnModel(session)
    model.notify = lambda kind, msg: None
    assert model.adapter == "auto"
    with pytest.raises(ValueError):
        model.set_adapter("prompt")
    image, labels = labels_for(SHAPE, [1, 3])
    progress, messages = [], []
    model.progress.connect(lambda text, v, n: progress.append(text))
    model.message.connect(messages.append)
    # "auto": the engine's second training has its own words, and the result says which kind
    assert model.start("Nuclei", "new", image, labels, epochs=3)
    assert session.learn_settings[-1].adapter == "auto"
    assert any(t.startswith("Training the Alignment Layer · epoch 1 of 3") for t in progress)
    assert any(
        t.startswith("Little gain: trying decoder adapters too · epoch 3 of 3") for t in progress
    )
    assert "(decoder adapter)." in messages[-1]
    assert (
        "Both adapter kinds were tried there (Alignment Layer 0.512, decoder adapter 0.900)"
        in (messages[-1])
    )
    progress.clear()
    model.set_adapter("decoder")
    assert model.start("MR lesion", "new", image, labels, epochs=3)
    assert session.learn_settings[-1].adapter == "decoder"
    assert session.learn_settings[-1].epochs == 3
    assert any(t.startswith("Training the decoder adapters · epoch 2 of 3") for t in progress)
    assert "(decoder adapter)." in messages[-1]
    model.set_adapter("alignment")
    progress.clear()
    assert model.start("CT liver", "new", image, labels, epochs=2)
    assert session.learn_settings[-1].adapter == "alignment"
    assert any(t.startswith("Training the Alignment Layer · epoch 1 of 2") for t in progress)
    assert "adapter)" not in messages[-1]
    progress.clear()  # extending a decoder task: its own kind's words (the engine keeps it)
    assert model.start("MR tumour", "extend", image, labels, epochs=2)
    assert any(t.startswith("Training the decoder adapters") for t in progress)


def test_cancel_a_training_saves_nothing(monkeypatch):
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    session = FakeSession()
    model = LearnModel(session)
    model.notify = lambda kind, msg: None
    image, labels = labels_for(SHAPE, [1, 3])
    messages, learned = [], []
    model.message.connect(messages.append)
    model.learned.connect(learned.append)
    model.progress.connect(lambda text, v, n: model.cancel() if "epoch 2" in text else None)
    assert model.start("Liver", "new", image, labels, epochs=5)
    assert not model.running and not learned and session.saved == []
    assert messages[-1] == "Training cancelled; nothing was saved."


def test_the_model_never_imports_qt():
    code = (
        "import sys; import napari_casam._model, napari_casam._texts, napari_casam._jobs; "
        "import napari_casam._session, napari_casam._prompts, napari_casam._model.engine; "
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_busy_states_have_words(dock):
    seen = []
    dock.job_changed.connect(lambda text, done, total: seen.append((text, total)))
    dock.session.route_for[(2,)] = None  # not embedded yet: the card waits for it
    dock.update_route()
    assert ("Computing the image embedding…", 0) in seen  # busy, without a count
    dock.forget_route()
    text = dock.shown[-1][0]
    assert text.headline == "Not routed yet" and "routing it now" in text.detail
    dock.auto_route = False
    dock.show_route()
    assert "turn on “Route the slice in view”" in dock.shown[-1][0].detail


def test_the_docks_estimate_is_one_short_line_with_the_total():
    from casam.estimate import LearnEstimate

    est = LearnEstimate(embed_s=6.1, n_embed=15, step_s=6.5, n_steps=48, router_s=6, evaluate_s=4)
    progress = FakeProgress("plan", 1, 1, message=str(est), estimate=est)
    assert _texts.describe_estimate(progress) == "Estimated time: about 6.9 min on this machine."
