"""The interactive 3-D row: Segment through volume, a clicks (Points) layer, negative, undo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from napari_casam._volume_edit import click_to_pixel

TIPS = {
    "propagate": "Segment the selected object (its mask on this slice, or the last box drawn "
    "here) through the whole volume, slice by slice; one undo step (Ctrl+Z on the masks).",
    "clicks": "Add a Points layer: each click adds a point to the selected object on the slice "
    "in view and updates its mask from its box and clicks.",
    "negative": "Clicks are negative (not the object) while this is on.",
    "undo": "Remove the last click and its change of the mask.",
}


class InteractivePanel(QWidget):
    """Buttons bound to a :class:`napari_casam._model.volume.VolumeTools`."""

    def __init__(self, viewer: Any, tools: Any, image: Callable[[], Any]) -> None:
        super().__init__()
        self.viewer, self.tools, self._image = viewer, tools, image
        self.points: Any = None
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        row1, row2 = QHBoxLayout(), QHBoxLayout()
        self.propagate_btn = QPushButton("Segment through volume")
        self.clicks_btn = QPushButton("Clicks")
        self.negative = QCheckBox("Negative")
        self.undo_btn = QPushButton("Undo click")
        for w, key in (
            (self.propagate_btn, "propagate"),
            (self.clicks_btn, "clicks"),
            (self.negative, "negative"),
            (self.undo_btn, "undo"),
        ):
            w.setToolTip(TIPS[key])
        row1.addWidget(self.propagate_btn)
        row2.addWidget(self.clicks_btn)
        row2.addWidget(self.negative)
        row2.addWidget(self.undo_btn)
        col.addLayout(row1)
        col.addLayout(row2)
        self.propagate_btn.clicked.connect(lambda: self.tools.propagate())
        self.clicks_btn.clicked.connect(lambda: self.clicks_layer())
        self.negative.toggled.connect(self._on_negative)
        self.undo_btn.clicked.connect(lambda: self.undo_click())

    def _on_negative(self, on: bool) -> None:
        self.tools.negative = bool(on)

    def clicks_layer(self) -> Any:
        """The clicks layer of the current image (made on first use), in add mode."""
        image = self._image()
        if image is None:
            return None
        name = f"{image.name} clicks"
        if self.points is None or self.points not in self.viewer.layers:
            ndim = image.data.ndim - (1 if image.rgb else 0)
            self.points = self.viewer.add_points(ndim=ndim, name=name, size=4)
            self.points.events.data.connect(self._on_points)
        self._select()
        QTimer.singleShot(0, self._select)  # after the dock has linked the new layer
        return self.points

    def _select(self) -> None:
        if self.points is not None and self.points in self.viewer.layers:
            self.viewer.layers.selection.active = self.points
            self.points.mode = "add"

    def _on_points(self, event: Any) -> None:
        action = str(getattr(getattr(event, "action", None), "value", getattr(event, "action", "")))
        if action != "added" or not len(self.points.data):
            return
        image = self._image()
        n_lead = image.data.ndim - 2 - (1 if image.rgb else 0)
        index, x, y = click_to_pixel(self.points.data[-1], n_lead)
        if not self.tools.click(x, y, index):
            self._drop_last()

    def _drop_last(self) -> None:
        if self.points is not None and len(self.points.data):
            with self.points.events.data.blocker():
                self.points.data = self.points.data[:-1]

    def undo_click(self) -> bool:
        if not self.tools.undo_click():
            return False
        self._drop_last()
        return True
