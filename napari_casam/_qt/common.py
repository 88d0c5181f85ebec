"""Small widget builders the views share."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QWidget
from superqt import QCollapsible


def combo(tip: str) -> QComboBox:
    """A combo box that shrinks to 8 characters (the dock is narrow) with a tooltip."""
    box = QComboBox()
    box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(8)
    box.setToolTip(tip)
    return box


def section(title: str, tip: str, body: QWidget, expanded: bool = True) -> QCollapsible:
    """A collapsible section of the dock around ``body``."""
    box = QCollapsible(title)
    box.setToolTip(tip)
    box.toggleButton().setToolTip(tip)
    box.addWidget(body)
    if expanded:
        box.expand(animate=False)
    return box
