"""More open images to learn from, each with its own Labels layer (several patients, one task)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QWidget

from napari_casam._qt.common import combo
from napari_casam._texts import TIPS


class PairsList(QWidget):
    """One row per open image other than the dock's: a tick box and its Labels layer.

    Ticks and chosen Labels layers are kept (by layer name) when the rows are rebuilt.
    """

    def __init__(self, default_labels: Callable[[Any], Any], parent: QWidget | None = None):
        super().__init__(parent)
        self._default_labels = default_labels
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setColumnStretch(1, 1)
        self.empty = QLabel("No other image is open.")
        self.empty.setToolTip(TIPS["also_learn"])
        self.grid.addWidget(self.empty, 0, 0, 1, 2)
        self.rows: dict[str, tuple[QCheckBox, Any]] = {}
        self._images: dict[str, Any] = {}
        self._labels: dict[str, Any] = {}

    def refresh(self, images: list[Any], labels: list[Any]) -> None:
        """Rebuild the rows for ``images`` (napari Image layers) over these Labels layers."""
        kept = {n: (box.isChecked(), c.currentText()) for n, (box, c) in self.rows.items()}
        for box, choice in self.rows.values():
            for w in (box, choice):
                self.grid.removeWidget(w)
                w.deleteLater()
        self.rows = {}
        self._images = {ly.name: ly for ly in images}
        self._labels = {ly.name: ly for ly in labels}
        for r, image in enumerate(images):
            box = QCheckBox(image.name)
            box.setToolTip(TIPS["also_learn"])
            choice = combo(TIPS["also_labels"])
            choice.addItems(list(self._labels))
            ticked, chosen = kept.get(image.name, (False, ""))
            default = self._default_labels(image)
            if chosen in self._labels:
                choice.setCurrentText(chosen)
            elif default is not None and default.name in self._labels:
                choice.setCurrentText(default.name)
            box.setChecked(ticked)
            self.grid.addWidget(box, r + 1, 0)
            self.grid.addWidget(choice, r + 1, 1)
            self.rows[image.name] = (box, choice)
        self.empty.setVisible(not images)

    def tick(self, image: str, labels: str | None = None, on: bool = True) -> None:
        """Tick (or untick) the row of ``image``, choosing its Labels layer ``labels``."""
        box, choice = self.rows[image]
        if labels is not None:
            i = choice.findText(labels)
            if i < 0:
                raise ValueError(f"no Labels layer named {labels!r}")
            choice.setCurrentIndex(i)
        box.setChecked(on)

    def pairs(self) -> list[tuple[Any, Any]]:
        """The ticked (image layer, Labels layer or None) pairs, in row order."""
        return [
            (self._images[name], self._labels.get(choice.currentText()))
            for name, (box, choice) in self.rows.items()
            if box.isChecked()
        ]
