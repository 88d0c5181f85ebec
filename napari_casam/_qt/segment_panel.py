"""The "Segment with boxes" section: image choice, routing card, override, volume tools."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from napari_casam._qt.common import combo
from napari_casam._qt.job_bar import JobBar
from napari_casam._qt.routing_card import RoutingCard
from napari_casam._texts import AUTO, HINT, SAM, TIPS


class SegmentPanel(QGroupBox):
    """Controls only; the dock binds them to the model."""

    def __init__(self, auto_route: bool, parent: QWidget | None = None) -> None:
        super().__init__("Segment with boxes", parent)
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.image_combo = combo(TIPS["image"])
        form.addRow("Image", self.image_combo)
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        hint.setToolTip(TIPS["hint"])
        form.addRow(hint)
        self.card = RoutingCard()
        form.addRow(self.card)
        self.override = combo(TIPS["override"])
        self.fill_override([])
        form.addRow("Use", self.override)
        self.auto_route = QCheckBox("Route the slice in view")
        self.auto_route.setChecked(auto_route)
        self.auto_route.setToolTip(TIPS["auto_route"])
        form.addRow(self.auto_route)
        row = QHBoxLayout()
        self.prepare_btn = QPushButton("Prepare volume")
        self.prepare_btn.setToolTip(TIPS["prepare"])
        self.interp_btn = QPushButton("Interpolate")
        self.interp_btn.setToolTip(TIPS["interpolate"])
        row.addWidget(self.prepare_btn)
        row.addWidget(self.interp_btn)
        form.addRow(row)
        self.jobs = JobBar()
        form.addRow(self.jobs)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setToolTip(TIPS["status"])
        form.addRow(self.status)

    @property
    def override_value(self) -> str:
        return self.override.currentData() or AUTO

    def fill_override(self, names: list[str]) -> bool:
        """List Automatic, Plain SAM and the tasks; False when the choice had to be reset."""
        current = self.override.currentData() or AUTO
        self.override.blockSignals(True)
        self.override.clear()
        self.override.addItem("Automatic (router)", AUTO)
        self.override.addItem("Plain SAM", SAM)
        for n in names:
            self.override.addItem(f"Task: {n}", n)
        i = self.override.findData(current)
        self.override.setCurrentIndex(max(i, 0))
        self.override.blockSignals(False)
        return i >= 0

    def set_images(self, names: list[str], current: str) -> None:
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        else:
            self.image_combo.setCurrentIndex(-1)
        self.image_combo.blockSignals(False)

    def show_image(self, name: str) -> None:
        if self.image_combo.currentText() != name:
            self.image_combo.blockSignals(True)
            self.image_combo.setCurrentText(name)
            self.image_combo.blockSignals(False)
