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

from napari_casam._session import BACKBONE_TITLES, needs_checkpoint
from napari_casam._settings import PluginSettings

DEVICE_TITLES = {"auto": "auto", "cpu": "CPU", "cuda": "CUDA GPU", "mps": "Apple MPS"}


class ModelPanel(QWidget):
    """Emits ``changed`` when the user picks another backbone, checkpoint, device or library."""

    changed = Signal()

    def __init__(self, settings: PluginSettings, default_library: str, parent=None) -> None:
        super().__init__(parent)
        self._default_library = default_library
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)

        self.backbone = QComboBox()

        self.backbone.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)

        self.backbone.setMinimumContentsLength(8)
        for name, title in BACKBONE_TITLES.items():
            self.backbone.addItem(title, name)
        self.backbone.setToolTip(
            "Frozen SAM model that computes image embeddings and masks. LiteMedSAM ships "
            "with the plugin and runs on a laptop CPU; SAM ViT-B/L/H and MedSAM need their "
            "official checkpoint file. Tasks are tied to the backbone they were learned with."
        )
        form.addRow("Backbone", self.backbone)

        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("checkpoint .pth file")
        self.checkpoint.setToolTip("Local weight file of the chosen backbone (official .pth).")
        self.checkpoint_btn = QPushButton("Browse…")
        self.checkpoint_btn.setToolTip("Choose the backbone's checkpoint file.")
        row = QHBoxLayout()
        row.addWidget(self.checkpoint, 1)
        row.addWidget(self.checkpoint_btn)
        self.checkpoint_row = QWidget()
        self.checkpoint_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        self.checkpoint_label = QLabel("Checkpoint")
        form.addRow(self.checkpoint_label, self.checkpoint_row)

        self.device = QComboBox()

        self.device.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)

        self.device.setMinimumContentsLength(8)
        self.device.setToolTip(
            "Where the model runs. auto = CUDA GPU, then Apple MPS, then CPU. "
            "GPUs appear here once the model has been loaded."
        )
        form.addRow("Device", self.device)

        self.library = QLineEdit()
        self.library.setReadOnly(True)
        self.library.setToolTip(
            "Folder of the task library (learned tasks). Share it, or export single tasks, "
            "to use the same tasks at another site."
        )
        self.library_btn = QPushButton("Browse…")
        self.library_btn.setToolTip("Choose another task library folder.")
        lrow = QHBoxLayout()
        lrow.setContentsMargins(0, 0, 0, 0)
        lrow.addWidget(self.library, 1)
        lrow.addWidget(self.library_btn)
        lw = QWidget()
        lw.setLayout(lrow)
        form.addRow("Library", lw)

        self.disk_cache = QCheckBox("Keep embeddings on disk")
        self.disk_cache.setToolTip(
            "Store every computed embedding in the per-user cache folder (about 2 MB per "
            "slice), so a volume opened again answers at once in a later session."
        )
        form.addRow(self.disk_cache)

        self.status = QLabel("Model not loaded yet")
        self.status.setWordWrap(True)
        self.status.setToolTip("State of the model (loads in the background on first use).")
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
