"""The task library panel: list, rename, delete (with confirmation), export, import."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QMessageBox

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer, open_dock, with_learned_task, ct_spleen):
    viewer = make_napari_viewer()
    viewer.add_image(ct_spleen[0], name="CT")
    return open_dock(viewer)


def cells(panel, row=0):
    return [panel.table.item(row, c).text() for c in range(panel.table.columnCount())]


def test_panel_lists_the_tasks_of_the_backbone(dock):
    panel = dock.library
    assert panel.names() == ["CT spleen"]
    name, n_images, threshold, iou, created = cells(panel)
    info = dock.session.library.info("CT spleen")
    assert int(n_images) == info.n_images
    assert float(threshold) == pytest.approx(info.threshold, rel=1e-2)
    assert "→" in iou and created.startswith(info.created[:10])
    assert panel.empty.isHidden()


def test_rename_updates_library_routing_choices(dock, wait_idle):
    assert dock.library.rename("CT spleen", "Spleen (CT)")
    wait_idle(dock)
    assert dock.library.names() == ["Spleen (CT)"]
    assert dock.override.findData("Spleen (CT)") >= 0
    assert dock.override.findData("CT spleen") < 0
    assert dock.session.predictor.task_names == ["Spleen (CT)"]


def test_delete_asks_first(dock, monkeypatch, wait_idle):
    asked = []

    def answer(choice):
        def fake(*args, **kwargs):
            asked.append(args[2])
            return choice

        return fake

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.Cancel))
    dock.library.select("CT spleen")
    dock.library.delete_btn.click()
    assert asked and "CT spleen" in asked[0]
    assert dock.library.names() == ["CT spleen"]
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.Yes))
    dock.library.delete_btn.click()
    wait_idle(dock)
    assert dock.library.names() == []
    assert dock.session.predictor.task_names == []
    assert not dock.library.empty.isHidden()


def test_export_then_import_a_single_file(dock, tmp_path, notes, wait_idle):
    out = dock.library.export_task("CT spleen", tmp_path / "ct-spleen.casamtask")
    assert out is not None and out.is_file() and out.suffix == ".casamtask"
    assert dock.library.delete("CT spleen", confirm=False)
    wait_idle(dock)
    assert dock.library.names() == []
    assert dock.library.import_task(out) == "CT spleen"
    wait_idle(dock)
    assert dock.library.names() == ["CT spleen"]
    assert dock.session.predictor.task_names == ["CT spleen"]
    # a second import clashes; under another name it is a second task
    assert dock.library.import_task(out, name="CT spleen") is None
    assert any("exists" in n.lower() or "already" in n.lower() for n in notes)
    assert dock.library.import_task(out, name="CT spleen site B") == "CT spleen site B"
    wait_idle(dock)
    assert dock.library.names() == ["CT spleen", "CT spleen site B"]


def test_import_of_a_broken_file_is_a_notification(dock, tmp_path, notes):
    bad = tmp_path / "broken.casamtask"
    bad.write_bytes(np.random.default_rng(0).bytes(100))
    assert dock.library.import_task(bad) is None
    assert any("Import failed" in n for n in notes)
    assert dock.library.names() == ["CT spleen"]
