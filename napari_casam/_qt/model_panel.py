"""Model section: backbone, checkpoint file, device and task library folder."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_casam._qt.common import combo
from napari_casam._session import backbone_titles, needs_checkpoint
from napari_casam._settings import PluginSettings
from napari_casam._texts import DEVICE_TITLES, TIPS


def _path_row(tip: str) -> tuple[QLineEdit, QPushButton, QWidget]:
    """A line edit for a path with its Browse… button, in one row widget."""
    edit = QLineEdit()
    edit.setToolTip(TIPS[tip])
    button = QPushButton("Browse…")
    button.setToolTip(TIPS[f"{tip}_btn"])
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit, 1)
    layout.addWidget(button)
    return edit, button, row


class ModelPanel(QWidget):
    """Emits ``changed`` when the user picks another backbone, checkpoint, device or library."""

    changed = Signal()

    def __init__(self, settings: PluginSettings, default_library: str, parent=None) -> None:
        super().__init__(parent)
        self._default_library = default_library
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)

        self.backbone = combo(TIPS["backbone"])
        for name, title in backbone_titles().items():
            self.backbone.addItem(title, name)
        form.addRow("Backbone", self.backbone)

        self.checkpoint, self.checkpoint_btn, self.checkpoint_row = _path_row("checkpoint")
        self.checkpoint.setPlaceholderText("checkpoint .pth file")
        self.checkpoint_label = QLabel("Checkpoint")
        form.addRow(self.checkpoint_label, self.checkpoint_row)

        self.device = combo(TIPS["device"])
        form.addRow("Device", self.device)

        self.library, self.library_btn, library_row = _path_row("library")
        self.library.setReadOnly(True)
        form.addRow("Library", library_row)

        self.disk_cache = QCheckBox("Keep embeddings on disk")
        self.disk_cache.setToolTip(TIPS["disk_cache"])
        form.addRow(self.disk_cache)

        self.status = QLabel("Model not loaded yet")
        self.status.setWordWrap(True)
        self.status.setToolTip(TIPS["model_status"])
        form.addRow(self.status)

        self._checkpoints = dict(settings.checkpoints)
        self._set_combo(self.backbone, settings.backbone)
        self.set_devices(
            ["auto", "cpu"] + ([settings.device] if settings.device not in ("auto", "cpu") else [])
        )
        self._set_combo(self.device, settings.device)
        self.library.setText(settings.library or default_library)
        self.checkpoint.setText(self._checkpoints.get(self.backbone_name, ""))
        self.disk_cache.setChecked(settings.disk_cache)
        self._update_checkpoint_row()

        self.backbone.currentIndexChanged.connect(self._on_backbone)
        self.device.currentIndexChanged.connect(lambda _: self.changed.emit())
        self.checkpoint.editingFinished.connect(self._on_checkpoint_edited)
        self.checkpoint_btn.clicked.connect(self.browse_checkpoint)
        self.library_btn.clicked.connect(self.browse_library)
        self.disk_cache.toggled.connect(lambda _: self.changed.emit())

    # ---- values ---------------------------------------------------------------------------
    @property
    def backbone_name(self) -> str:
        return self.backbone.currentData() or "litemedsam"

    @property
    def device_name(self) -> str:
        return self.device.currentData() or "auto"

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint.text().strip() if needs_checkpoint(self.backbone_name) else ""

    @property
    def library_dir(self) -> str:
        text = self.library.text().strip()
        return "" if text == self._default_library else text

    @property
    def checkpoints(self) -> dict[str, str]:
        return dict(self._checkpoints)

    def ready(self) -> bool:
        """False when the chosen backbone still needs a checkpoint file."""
        return not needs_checkpoint(self.backbone_name) or bool(self.checkpoint_path)

    # ---- setters --------------------------------------------------------------------------
    def set_devices(self, devices: list[str]) -> None:
        current = self.device.currentData()
        self.device.blockSignals(True)
        self.device.clear()
        for d in devices:
            self.device.addItem(DEVICE_TITLES.get(d, d), d)
        if current:
            self._set_combo(self.device, current)
        self.device.blockSignals(False)

    def set_backbone(self, name: str) -> None:
        self._set_combo(self.backbone, name)

    def set_checkpoint(self, path: str) -> None:
        self.checkpoint.setText(path)
        self._on_checkpoint_edited()

    def set_library(self, path: str) -> None:
        if path and path != self.library.text():
            self.library.setText(path)
            self.changed.emit()

    def browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Checkpoint of " + self.backbone.currentText(),
            "",
            "PyTorch weights (*.pth *.pt);;All files (*)",
        )
        if path:
            self.set_checkpoint(path)

    def browse_library(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Task library folder", self.library.text())
        if path:
            self.set_library(path)

    # ---- internals ------------------------------------------------------------------------
    @staticmethod
    def _set_combo(combo: QComboBox, data: str) -> None:
        i = combo.findData(data)
        if i >= 0:
            combo.setCurrentIndex(i)

    def _update_checkpoint_row(self) -> None:
        show = needs_checkpoint(self.backbone_name)
        self.checkpoint_row.setVisible(show)
        self.checkpoint_label.setVisible(show)

    def _on_backbone(self, _: int) -> None:
        self.checkpoint.setText(self._checkpoints.get(self.backbone_name, ""))
        self._update_checkpoint_row()
        self.changed.emit()

    def _on_checkpoint_edited(self) -> None:
        name = self.backbone_name
        text = self.checkpoint.text().strip()
        if self._checkpoints.get(name, "") == text:
            return
        if text:
            text = str(Path(text).expanduser())
            self._checkpoints[name] = text
        else:
            self._checkpoints.pop(name, None)
        self.changed.emit()
