"""The dock in a real napari viewer (Xvfb): boxes give labels, undo, volumes, settings."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from qtpy.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QLineEdit,
    QProgressBar,
    QSpinBox,
    QTableWidget,
)

from casam.runtime import _child
from napari_casam._layers import rectangle_to_box

pytestmark = pytest.mark.gui

SLICE = 20


@pytest.fixture
def ct_viewer(make_napari_viewer, ct_spleen):
    images, masks = ct_spleen
    viewer = make_napari_viewer()
    viewer.add_image(images, name="CT", contrast_limits=(-160, 240))
    viewer.dims.set_current_step(0, SLICE)
    return viewer


def draw(widget, rects):
    """Add rectangles to the boxes layer, as drawing them does."""
    widget.prompts_layer().add_rectangles(list(rects))


def test_dock_opens_through_the_manifest_with_its_layers(ct_viewer, open_dock):
    from napari_casam._widget import CasamWidget

    w = open_dock(ct_viewer)
    assert isinstance(w, CasamWidget)
    assert w.image_layer.name == "CT"
    boxes, masks = w.prompts_layer(), w.masks_layer()
    assert boxes.mode == "add_rectangle" and ct_viewer.layers.selection.active is boxes
    assert masks.data.shape == ct_viewer.layers["CT"].data.shape and not masks.data.any()
    assert w.session.predictor is not None
    assert "LiteMedSAM" in w.model.status.text()
    # loading kept the GUI thread free: torch imported by the worker, exports built elsewhere
    assert "torch" in sys.modules and _child.enabled()
    # routing of the slice in view, with no task learned yet
    assert w.card.text.headline == "SAM fallback"
    assert "turn on" not in w.card.text.detail  # "Route the slice in view" is on
    assert f"slice {SLICE} / 28" in w.card.where.text()  # as napari's slider numbers it


def test_every_control_has_a_tooltip(ct_viewer, open_dock):
    w = open_dock(ct_viewer)
    kinds = (QAbstractButton, QComboBox, QLineEdit, QSpinBox, QProgressBar, QTableWidget)
    missing = [
        f"{type(c).__name__} {getattr(c, 'text', lambda: '')()!r}"
        for kind in kinds
        for c in w.findChildren(kind)
        if not c.toolTip()
        and not (isinstance(c, QLineEdit) and isinstance(c.parent(), QComboBox))
        and c.objectName() != "qt_spinbox_lineedit"
        and type(c) is not QAbstractButton  # the table's corner button
    ]
    assert not missing, missing


def test_box_segments_the_current_slice_into_labels(ct_viewer, open_dock, ct_spleen, h, wait_idle):
    _, gt = ct_spleen
    w = open_dock(ct_viewer)
    draw(w, [h.bbox_rect(gt[SLICE], (SLICE,))])
    wait_idle(w)
    lab = w.masks_layer().data
    assert set(np.unique(lab)) == {0, 1}
    assert lab[SLICE].any() and not np.delete(lab, SLICE, axis=0).any()
    assert h.iou(lab[SLICE] == 1, gt[SLICE]) > 0.5
    assert w.prompts_layer().features["label"].tolist() == [1]
    assert w.masks_layer().selected_label == 1
    assert "1 mask with plain SAM" in w.status.text()
    assert w.last_timing["box_to_mask"] > 0


def test_several_boxes_get_their_own_labels(ct_viewer, open_dock, h, wait_idle):
    w = open_dock(ct_viewer)
    draw(w, [h.bbox_rect(np.pad(np.ones((20, 20)), 30), (SLICE,))])
    draw(w, [h.bbox_rect(np.pad(np.ones((15, 25)), ((10, 76), (60, 37))), (SLICE,))])
    wait_idle(w)
    values = set(np.unique(w.masks_layer().data[SLICE])) - {0}
    assert values == {1, 2}
    assert sorted(w.prompts_layer().features["label"]) == [1, 2]


def test_ctrl_z_on_the_boxes_layer_undoes_a_segmentation(
    ct_viewer, open_dock, ct_spleen, h, wait_idle
):
    from napari.utils.key_bindings import coerce_keybinding

    _, gt = ct_spleen
    w = open_dock(ct_viewer)
    boxes, masks = w.prompts_layer(), w.masks_layer()
    draw(w, [h.bbox_rect(gt[SLICE], (SLICE,))])
    wait_idle(w)
    assert masks.data.any()
    # the user corrects the mask with napari's own tools: an undoable paint
    masks.paint((SLICE, 5, 5), 7)
    assert masks.data[SLICE, 5, 5] == 7
    undo = boxes.keymap[coerce_keybinding("Control-Z")]
    undo(boxes)  # first Ctrl+Z undoes the correction only
    assert masks.data[SLICE, 5, 5] == 0 and masks.data.any() and len(boxes.data) == 1
    undo(boxes)  # second one undoes the segmentation and drops its box
    assert not masks.data.any()
    assert len(boxes.data) == 0
    boxes.keymap[coerce_keybinding("Control-Shift-Z")](boxes)
    assert masks.data.any()


def test_two_d_grayscale_and_rgb_images(make_napari_viewer, open_dock, mr_brain, h, wait_idle):
    images, masks = mr_brain
    viewer = make_napari_viewer()
    viewer.add_image(images[5], name="MR")
    w = open_dock(viewer)
    draw(w, [h.bbox_rect(masks[5])])
    wait_idle(w)
    gray_iou = h.iou(w.masks_layer().data == 1, masks[5])
    assert gray_iou > 0.5
    rgb = np.stack([images[5]] * 3, -1)
    rgb = (255 * (rgb - rgb.min()) / np.ptp(rgb)).astype(np.uint8)
    viewer.add_image(rgb, name="MR as RGB", rgb=True)
    wait_idle(w)
    assert w.image_layer.name == "MR as RGB"
    assert w.masks_layer().data.shape == rgb.shape[:2]
    draw(w, [h.bbox_rect(masks[5])])
    wait_idle(w)
    got = w.masks_layer().data == 1
    _, box = rectangle_to_box(h.bbox_rect(masks[5]))
    expected = w.session.predictor.predict(box, image=rgb).masks[0]
    np.testing.assert_array_equal(
        got, expected
    )  # the plugin passed the engine the right plane and box
    assert h.iou(got, masks[5]) > 0.3, gray_iou


def test_box_outside_the_image_is_a_notification(ct_viewer, open_dock, notes, wait_idle):
    w = open_dock(ct_viewer)
    far = np.array(
        [[SLICE, 500, 500], [SLICE, 500, 600], [SLICE, 600, 600], [SLICE, 600, 500]], float
    )
    draw(w, [far])
    wait_idle(w)
    assert not w.masks_layer().data.any()
    assert any("ignored" in n for n in notes)


def test_override_forces_plain_sam(ct_viewer, open_dock, ct_spleen, h, wait_idle):
    _, gt = ct_spleen
    w = open_dock(ct_viewer)
    w.set_override("sam")
    assert w.card.text.headline == "Plain SAM (your choice)"
    draw(w, [h.bbox_rect(gt[SLICE], (SLICE,))])
    wait_idle(w)
    assert w.last_segmentation.task is None
    w.set_override("auto")
    assert w.card.text.headline == "SAM fallback"


def test_routing_card_follows_the_slice(ct_viewer, open_dock, wait_idle):
    w = open_dock(ct_viewer)
    ct_viewer.dims.set_current_step(0, 3)
    wait_idle(w)
    assert "slice 3 / 28" in w.card.where.text()
    assert w.session.predictor.is_cached(ct_viewer.layers["CT"].data[3])


def test_interpolate_between_two_slices_is_one_undo_step(
    ct_viewer, open_dock, ct_spleen, h, wait_idle
):
    _, gt = ct_spleen
    w = open_dock(ct_viewer)
    a, b = 14, 19
    ct_viewer.dims.set_current_step(0, a)
    draw(w, [h.bbox_rect(gt[a], (a,))])
    ct_viewer.dims.set_current_step(0, b)
    draw(w, [h.bbox_rect(gt[b], (b,))])
    wait_idle(w)
    masks = w.masks_layer()
    assert set(np.unique(masks.data)) == {0, 1, 2}
    assert w.interpolate()
    wait_idle(w)
    lab = masks.data
    assert all(lab[k].any() for k in range(a, b + 1))
    assert set(np.unique(lab)) == {0, 1}  # the second box joined the first box's object
    ious = [h.iou(lab[k] == 1, gt[k]) for k in range(a + 1, b)]
    assert min(ious) > 0.4, ious
    assert "Interpolated 4 slices" in w.status.text()
    assert w.undo_segmentation()  # one step removes the whole interpolation
    lab = masks.data
    assert set(np.unique(lab)) == {0, 1, 2}
    assert not any(lab[k].any() for k in range(a + 1, b))


def test_interpolate_needs_two_slices(ct_viewer, open_dock, notes):
    w = open_dock(ct_viewer)
    assert not w.interpolate()
    assert any("two different slices" in n for n in notes)


def test_prepare_volume_embeds_every_slice_with_progress(
    make_napari_viewer, open_dock, ct_spleen, qtbot, wait_idle
):
    images, _ = ct_spleen
    viewer = make_napari_viewer()
    vol = images[:6] + 1  # content not embedded by other tests
    viewer.add_image(vol, name="CT part")
    w = open_dock(viewer)
    seen = []
    w.job_bar.valueChanged.connect(seen.append)
    assert w.prepare_volume()
    qtbot.waitUntil(lambda: w.job_bar.format().startswith("Embedding slice"), timeout=120_000)
    wait_idle(w)
    assert all(w.session.predictor.is_cached(vol[k]) for k in range(6))
    assert max(seen) >= 5
    assert "Volume prepared" in w.status.text()


def test_prepare_volume_can_be_cancelled(
    make_napari_viewer, open_dock, ct_spleen, qtbot, wait_idle
):
    images, _ = ct_spleen
    viewer = make_napari_viewer()
    vol = images + 2
    viewer.add_image(vol, name="CT copy")
    w = open_dock(viewer)
    w.prepare_volume()
    qtbot.waitUntil(lambda: w.job_bar.value() >= 1, timeout=120_000)
    w.cancel_jobs()
    wait_idle(w)
    cached = sum(w.session.predictor.is_cached(vol[k]) for k in range(len(vol)))
    assert cached < len(vol)


def test_model_choices_are_remembered(ct_viewer, open_dock, tmp_path, casam_home, notes):
    from napari_casam._settings import PluginSettings

    w = open_dock(ct_viewer)
    lib = tmp_path / "other-library"
    w.model.set_library(str(lib))
    assert PluginSettings.load().library == str(lib)
    assert w.session.library_path == lib
    # a backbone that needs a checkpoint asks for it instead of failing
    w.model.set_backbone("sam_vit_b")
    assert not w.model.checkpoint_row.isHidden()
    assert "checkpoint" in w.model.status.text().lower()
    bogus = tmp_path / "not-a-model.pth"
    bogus.write_bytes(b"no weights here")
    w.model.set_checkpoint(str(bogus))
    s = PluginSettings.load()
    assert s.backbone == "sam_vit_b" and s.checkpoints["sam_vit_b"] == str(bogus)


def test_bad_checkpoint_is_a_notification(ct_viewer, open_dock, tmp_path, notes, wait_idle):
    w = open_dock(ct_viewer)
    bogus = tmp_path / "not-a-model.pth"
    bogus.write_bytes(b"no weights here")
    w.model.set_backbone("sam_vit_b")
    w.model.set_checkpoint(str(bogus))
    wait_idle(w)
    assert "not loaded" in w.model.status.text()
    assert any("not-a-model.pth" in n for n in notes)
    w.model.set_backbone("litemedsam")
    wait_idle(w)
    assert w.session.predictor is not None


def test_sample_data_opens_with_the_dock(make_napari_viewer, open_dock, wait_idle, h):
    viewer = make_napari_viewer()
    w = open_dock(viewer)
    viewer.open_sample("napari-casam", "ct_spleen")
    wait_idle(w)
    names = [ly.name for ly in viewer.layers]
    assert "CT abdomen" in names and any("ground truth" in n for n in names)
    assert w.image_layer.name == "CT abdomen"
    gt = next(ly for ly in viewer.layers if "ground truth" in ly.name).data
    k = int(np.argmax(gt.reshape(len(gt), -1).sum(1)))
    viewer.dims.set_current_step(0, k)
    draw(w, [h.bbox_rect(gt[k], (k,))])
    wait_idle(w)
    assert h.iou(w.masks_layer().data[k] > 0, gt[k] > 0) > 0.5


def test_renaming_the_image_keeps_its_layers_linked(ct_viewer, open_dock, ct_spleen, h, wait_idle):
    w = open_dock(ct_viewer)
    ct_viewer.layers["CT"].name = "Patient 7 CT"
    assert w.image_combo.currentText() == "Patient 7 CT"
    assert w.image_layer.name == "Patient 7 CT"
    draw(w, [h.bbox_rect(ct_spleen[1][SLICE], (SLICE,))])
    wait_idle(w)
    assert w.masks_layer().data[SLICE].any()


def test_synchronous_mode_for_debugging(monkeypatch, ct_viewer, open_dock, ct_spleen, h):
    """CASAM_NAPARI_NOTHREADS=1 runs every job in the GUI thread: results are there at once."""
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    w = open_dock(ct_viewer, wait=False)
    assert w.session.predictor is not None
    draw(w, [h.bbox_rect(ct_spleen[1][SLICE], (SLICE,))])
    assert w.masks_layer().data[SLICE].any()
    assert not w.jobs.busy
