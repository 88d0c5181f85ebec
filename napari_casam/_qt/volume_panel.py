"""The "Clinical volume" section: CT display windows and "Save masks…" with the scan's geometry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QFileDialog, QFormLayout, QLabel, QPushButton, QWidget

from napari_casam._qt.common import combo
from napari_casam._texts import TIPS
from napari_casam._volume_layers import CT_WINDOWS, geometry_of

SAVE_FILTER = "NIfTI (*.nii.gz);;NRRD (*.nrrd);;MetaImage (*.mha);;DICOM SEG (*.dcm)"


class VolumePanel(QWidget):
    """Window presets for the image and saving its masks layer where the scan lies."""

    def __init__(
        self, image: Callable[[], Any], masks: Callable[[], Any], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._image, self._masks = image, masks
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.window = combo(TIPS["ct_window"])
        for name, (lo, hi) in CT_WINDOWS.items():
            self.window.addItem(f"{name} (W {hi - lo:.0f} / L {(lo + hi) / 2:.0f})", name)
        self.window.activated.connect(lambda i: self.apply_window(self.window.itemData(i)))
        form.addRow("CT window", self.window)
        self.save_btn = QPushButton("Save masks…")
        self.save_btn.setToolTip(TIPS["save_masks"])
        self.save_btn.clicked.connect(self._ask_and_save)
        form.addRow(self.save_btn)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form.addRow(self.status)

    def apply_window(self, name: str) -> bool:
        """Show the current image with the CT window ``name``; False if there is no image."""
        image = self._image()
        if image is None:
            return False
        image.contrast_limits = CT_WINDOWS[name]
        return True

    def _ask_and_save(self) -> None:
        image = self._image()
        start = geometry_of(getattr(image, "metadata", None))
        base = f"{image.name} masks.nii.gz" if image is not None else "masks.nii.gz"
        path, _ = QFileDialog.getSaveFileName(
            self, "Save masks", base if start else "", SAVE_FILTER
        )
        if path:
            self.save_masks(path)

    def save_masks(self, path: str) -> str | None:
        """Write the masks layer to ``path`` with its image's geometry; returns the path written,
        or None (the reason is shown in the panel)."""
        from casam.errors import CasamError
        from napari_casam._writer import write_labels

        masks = self._masks()
        if masks is None:
            self.status.setText("No masks layer to save: choose an image first.")
            return None
        attributes = {"metadata": dict(masks.metadata), "scale": tuple(masks.scale)}
        try:
            (written,) = write_labels(path, masks.data, attributes)
        except CasamError as e:
            self.status.setText(str(e))
            return None
        self.status.setText(f"Saved {written}")
        return written
