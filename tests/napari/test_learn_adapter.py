"""The learn panel's adapter choice, in a real viewer with the real dock and LiteMedSAM: picked
with the keyboard, it reaches the training's LearnSettings; the task lands in the library as a
decoder task, the task list says so and the routing card routes to it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_the_adapter_choice_reaches_learn_settings_and_the_library(
    make_napari_viewer, open_dock, ct_spleen, qtbot, wait_idle, h, casam_home, monkeypatch
):
    from qtpy.QtCore import Qt

    images, gt = ct_spleen
    labels = np.zeros_like(gt)
    labels[h.LEARN_SLICES] = gt[h.LEARN_SLICES]
    viewer = make_napari_viewer()
    viewer.add_image(images, name="CT", contrast_limits=(-160, 240))
    viewer.add_labels(labels, name="CT corrected")
    viewer.layers.selection.active = viewer.layers["CT"]
    w = open_dock(viewer)
    w.learn.labels.setCurrentText("CT corrected")
    w.learn.settings_overrides = dict(h.TINY)
    combo = w.learn.adapter
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "alignment", "decoder"]
    assert combo.currentData() == "auto" and "lesions" in combo.itemText(2)
    combo.setFocus()
    qtbot.keyClick(combo, Qt.Key_Down)  # a closed combo box steps to the next item
    assert combo.currentData() == "alignment" and w.learn.model.adapter == "alignment"
    qtbot.keyClick(combo, Qt.Key_Down)
    assert combo.currentData() == "decoder" and w.learn.model.adapter == "decoder"
    seen = []
    session = w.learn.model.session
    job = session.job_learn

    def spy(images, masks, name, settings, *rest):
        seen.append(settings)
        return job(images, masks, name, settings, *rest)

    monkeypatch.setattr(session, "job_learn", spy)
    qtbot.keyClicks(w.learn.name, "CT spleen decoder")
    qtbot.mouseClick(w.learn.learn_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.learn.running, timeout=1_200_000)
    wait_idle(w)
    assert w.learn.last_error is None, w.learn.last_error
    assert [s.adapter for s in seen] == ["decoder"] and seen[0].epochs == h.TINY["epochs"]
    meta = json.loads((casam_home / "library" / "CT spleen decoder" / "task.json").read_text())
    assert meta["adapter"] == "decoder" and meta["format_version"] == 3
    assert "(decoder adapter)." in w.learn.result.text()
    assert w.library.names() == ["CT spleen decoder"]
    assert "decoder adapter" in w.library.table.item(0, 0).toolTip()
    viewer.dims.set_current_step(0, h.LEARN_SLICES[1])
    wait_idle(w)
    assert w.card.text.headline == "CT spleen decoder", w.card.text
