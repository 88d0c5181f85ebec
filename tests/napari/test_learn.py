"""Learning a task in the dock, and routing with it (real LiteMedSAM, real CT/MR slices)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

UNSEEN = 13  # a CT slice between trained ones (the tasks learn from the even slices 0..22)


def ct_with_labels(viewer, ct_spleen, slices):
    images, gt = ct_spleen
    labels = np.zeros_like(gt)
    labels[slices] = gt[slices]
    viewer.add_image(images, name="CT", contrast_limits=(-160, 240))
    viewer.add_labels(labels, name="CT corrected")
    viewer.layers.selection.active = viewer.layers["CT"]
    return labels


def test_learn_a_task_from_a_labels_layer(
    make_napari_viewer, open_dock, ct_spleen, qtbot, notes, wait_idle, h
):
    viewer = make_napari_viewer()
    ct_with_labels(viewer, ct_spleen, h.LEARN_SLICES)
    w = open_dock(viewer)
    assert w.image_layer.name == "CT"
    w.learn.labels.setCurrentText("CT corrected")
    w.learn.settings_overrides = dict(h.TINY)
    assert w.learn.learn(name="CT spleen")
    progress = []
    w.learn.worker.yielded.connect(progress.append)
    assert not w.learn.learn_btn.isEnabled() and w.learn.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not w.learn.running, timeout=1_200_000)
    wait_idle(w)
    assert w.learn.last_error is None, w.learn.last_error
    stages = {getattr(p, "stage", None) for p in progress}
    assert {"align", "vae", "save"} <= stages
    # the dock reports held-out IoU of SAM versus the task
    assert "Learned “CT spleen” from" in w.learn.result.text()
    assert "SAM" in w.learn.result.text() and "task" in w.learn.result.text()
    # the library panel lists it, the override offers it, routing uses it
    assert w.library.names() == ["CT spleen"]
    assert w.override.findData("CT spleen") >= 0
    # the new task is selected, its buttons usable, and the model panel counts it
    assert w.library.selected_name() == "CT spleen"
    assert w.library.rename_btn.isEnabled() and w.library.export_btn.isEnabled()
    assert "· 1 task ·" in w.model.status.text(), w.model.status.text()
    assert "epoch" in w.learn.progress_text.text() or w.learn.progress_text.text() == "Done"
    viewer.dims.set_current_step(0, UNSEEN)
    wait_idle(w)
    assert w.card.text.headline == "CT spleen", w.card.text


def test_routing_differs_for_a_learned_kind_and_an_unseen_kind(
    make_napari_viewer, open_dock, with_learned_task, ct_spleen, mr_brain, h, wait_idle
):
    images, gt = ct_spleen
    viewer = make_napari_viewer()
    viewer.add_image(images, name="CT", contrast_limits=(-160, 240))
    viewer.dims.set_current_step(0, UNSEEN)
    w = open_dock(viewer)
    assert w.library.names() == ["CT spleen"]
    ct_text = w.card.text
    assert ct_text.headline == "CT spleen" and ct_text.kind == "task"
    assert ct_text.detail.startswith("Its images look like this one (score")
    w.prompts_layer().add_rectangles([h.bbox_rect(gt[UNSEEN], (UNSEEN,))])
    wait_idle(w)
    assert w.last_segmentation.task == "CT spleen"
    assert "with CT spleen" in w.status.text()

    mr, _ = mr_brain
    viewer.add_image(mr[5], name="MR")
    wait_idle(w)
    assert w.image_layer.name == "MR"
    mr_text = w.card.text
    assert mr_text.headline == "SAM fallback" and mr_text.kind == "fallback"
    assert mr_text.detail.startswith("Unlike every learned task: the closest, CT spleen, scores")
    assert mr_text != ct_text
    # back to the CT: the card follows the selected image
    viewer.layers.selection.active = viewer.layers["CT"]
    wait_idle(w)
    assert w.card.text.headline == "CT spleen"


def test_too_little_data_is_a_notification_not_a_traceback(
    make_napari_viewer, open_dock, ct_spleen, notes, qtbot, casam_home, wait_idle, h
):
    viewer = make_napari_viewer()
    ct_with_labels(viewer, ct_spleen, [10, 12])
    w = open_dock(viewer)
    w.learn.labels.setCurrentText("CT corrected")
    w.learn.settings_overrides = dict(h.TINY)
    w.learn.learn(name="CT spleen")
    qtbot.waitUntil(lambda: not w.learn.running, timeout=300_000)
    assert w.learn.last_error, "expected a message"
    assert any(w.learn.last_error == n for n in notes)
    assert "Traceback" not in w.learn.last_error
    assert w.library.names() == []
    assert w.learn.learn_btn.isEnabled()


def test_learn_refuses_bad_requests_with_messages(
    make_napari_viewer, open_dock, ct_spleen, notes, with_learned_task
):
    viewer = make_napari_viewer()
    ct_with_labels(viewer, ct_spleen, [])
    w = open_dock(viewer)
    assert not w.learn.learn(name="")
    assert "name" in w.learn.last_error
    w.learn.labels.setCurrentText("CT corrected")
    assert not w.learn.learn(name="Other")
    assert "no labels yet" in w.learn.last_error
    assert not w.learn.learn(name="CT spleen", mode="new")
    assert "exists" in w.learn.last_error
    assert not w.learn.learn(name="Nope", mode="extend")
    assert "no task" in w.learn.last_error.lower()
    assert len(notes) >= 4


def test_cancel_a_training(
    make_napari_viewer, open_dock, ct_spleen, qtbot, casam_home, wait_idle, h
):
    viewer = make_napari_viewer()
    ct_with_labels(viewer, ct_spleen, h.LEARN_SLICES)
    w = open_dock(viewer)
    w.learn.labels.setCurrentText("CT corrected")
    w.learn.settings_overrides = {"epochs": 500, "vae_steps": 200}
    assert w.learn.learn(name="CT spleen")
    stages = []
    w.learn.worker.yielded.connect(lambda p: stages.append(getattr(p, "stage", p)))
    qtbot.waitUntil(lambda: "align" in stages, timeout=600_000)
    w.learn.cancel_btn.click()
    qtbot.waitUntil(lambda: not w.learn.running, timeout=300_000)
    assert "cancelled" in w.learn.result.text().lower()
    assert "vae" not in stages
    assert w.library.names() == []
    library = casam_home / "library"
    assert not [p for p in library.glob("*") if p.is_dir()], list(library.iterdir())
    wait_idle(w)


@pytest.mark.slow
def test_extend_an_existing_task(
    make_napari_viewer, open_dock, ct_spleen, with_learned_task, qtbot, wait_idle, h
):
    viewer = make_napari_viewer()
    ct_with_labels(viewer, ct_spleen, [1, 3, 5, 7, 9, 11])
    w = open_dock(viewer)
    before = w.session.library.info("CT spleen")
    w.learn.labels.setCurrentText("CT corrected")
    w.learn.settings_overrides = dict(h.TINY)
    assert w.learn.learn(name="CT spleen", mode="extend")
    qtbot.waitUntil(lambda: not w.learn.running, timeout=1_200_000)
    wait_idle(w)
    assert w.learn.last_error is None, w.learn.last_error
    after = w.session.library.info("CT spleen")
    assert after.n_images > before.n_images
    assert w.library.names() == ["CT spleen"]


def library_images(w, name):
    """The task's training + held-out image count, and the library table's "Images" cell."""
    info = w.session.library.info(name)
    row = w.library.names().index(name)
    return info.n_images + info.n_holdout, w.library.table.item(row, 1).text(), info


def test_learn_a_task_from_files(
    make_napari_viewer, open_dock, qtbot, tmp_path, notes, wait_idle, h
):
    from qtpy.QtCore import Qt
    from volume_helpers import ct_spleen, write_ct_nifti, write_mask_nifti

    write_ct_nifti(tmp_path / "scan.nii.gz", n=9)
    truth = ct_spleen(9)[1].copy()
    truth[4] = 0  # an empty slice: skipped, as casam learn skips it
    write_mask_nifti(tmp_path / "seg.nii.gz", truth)
    write_mask_nifti(tmp_path / "small.nii.gz", truth[:, :-3])
    viewer = make_napari_viewer()
    w = open_dock(viewer)
    w.learn.name.setText("CT spleen files")
    w.learn.settings_overrides = dict(h.TINY)
    qtbot.mouseClick(w.learn.files_btn, Qt.LeftButton)
    dialog = w.learn.files_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.request.text().startswith("Task: “CT spleen files” · New task · ")
    dialog.images.add_paths([str(tmp_path / "scan.nii.gz")])
    # a mask on another grid: the CLI's line in the dock and a notification, nothing saved
    dialog.masks.add_paths([str(tmp_path / "small.nii.gz")])
    qtbot.mouseClick(dialog.learn_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.learn.running, timeout=120_000)
    error = w.learn.last_error
    assert error.startswith(f"mask of {tmp_path / 'scan.nii.gz'}: ") and "98x" in error, error
    assert w.learn.result.text() == error and error in notes
    assert w.library.names() == [] and w.learn.files_btn.isEnabled()
    qtbot.mouseClick(w.learn.files_btn, Qt.LeftButton)  # the lists were kept: fix the mask
    assert dialog.isVisible() and dialog.message.text() == error
    dialog.masks.list.setCurrentRow(0)
    qtbot.mouseClick(dialog.masks.remove_btn, Qt.LeftButton)
    dialog.masks.add_paths([str(tmp_path / "seg.nii.gz")])
    assert dialog.images.paths() == [str(tmp_path / "scan.nii.gz")]
    assert dialog.masks.paths() == [str(tmp_path / "seg.nii.gz")]
    qtbot.mouseClick(dialog.learn_btn, Qt.LeftButton)
    assert w.learn.running and not dialog.isVisible()
    assert not w.learn.files_btn.isEnabled()
    qtbot.waitUntil(lambda: not w.learn.running, timeout=1_200_000)
    wait_idle(w)
    assert w.learn.last_error is None, w.learn.last_error
    assert w.learn_model.files_read == (8, 1)
    assert "Learned “CT spleen files” from" in w.learn.result.text()
    assert w.library.names() == ["CT spleen files"]
    total, cell, info = library_images(w, "CT spleen files")
    assert total == 8 and cell == str(info.n_images)
    assert len(viewer.layers) == 0  # nothing was opened in napari for it


def test_learn_a_task_from_two_open_images(
    make_napari_viewer, open_dock, ct_spleen, qtbot, wait_idle, h
):
    from qtpy.QtCore import QPoint, Qt

    images, gt = ct_spleen
    viewer = make_napari_viewer()
    lab_a, lab_b = np.zeros_like(gt[:14]), np.zeros_like(gt[14:])
    lab_a[[0, 2, 4, 6]] = gt[[0, 2, 4, 6]]
    lab_b[[1, 3, 5]] = gt[[15, 17, 19]]
    viewer.add_image(images[:14], name="patient A", contrast_limits=(-160, 240))
    viewer.add_labels(lab_a, name="A corrected")
    viewer.add_image(images[14:], name="patient B", contrast_limits=(-160, 240))
    viewer.add_labels(lab_b, name="B corrected")
    viewer.layers.selection.active = viewer.layers["patient B"]
    w = open_dock(viewer)
    assert w.image_layer.name == "patient B"
    w.learn.labels.setCurrentText("B corrected")
    assert list(w.learn.others.rows) == ["patient A"]
    box, choice = w.learn.others.rows["patient A"]
    assert not box.isChecked()
    qtbot.mouseClick(box, Qt.LeftButton, pos=QPoint(8, box.height() // 2))  # its tick box
    assert box.isChecked()
    # its Labels layer must be drawn on it: B's labels (15 slices) are refused, shapes named
    choice.setCurrentText("B corrected")
    w.learn.name.setText("CT spleen 2 patients")
    w.learn.settings_overrides = dict(h.TINY)
    qtbot.mouseClick(w.learn.learn_btn, Qt.LeftButton)
    assert not w.learn.running
    assert w.learn.last_error == (
        "“patient A” is 14×101×122 but its labels “B corrected” are 15×101×122; choose the "
        "Labels layer drawn on this image."
    )
    choice.setCurrentText("A corrected")
    qtbot.mouseClick(w.learn.learn_btn, Qt.LeftButton)
    assert w.learn.running
    assert w.learn.result.text().startswith(
        "Learning “CT spleen 2 patients” from 7 annotated images of 2 image layers"
    )
    qtbot.waitUntil(lambda: not w.learn.running, timeout=1_200_000)
    wait_idle(w)
    assert w.learn.last_error is None, w.learn.last_error
    assert w.library.names() == ["CT spleen 2 patients"]
    total, cell, info = library_images(w, "CT spleen 2 patients")
    assert total == 7 and cell == str(info.n_images)
