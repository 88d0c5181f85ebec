"""Small widget builders the views share."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible


def combo(tip: str) -> QComboBox:
    """A combo box that shrinks to 8 characters (the dock is narrow) with a tooltip that starts
    with the whole current text (a long layer name is elided in the box itself)."""
    box = QComboBox()
    box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(8)
    box.setToolTip(tip)
    box.currentTextChanged.connect(lambda text: box.setToolTip(f"{text}\n\n{tip}" if text else tip))
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


def scrolling_body(owner: QWidget) -> QVBoxLayout:
    """Give ``owner`` a vertically scrolling body (no horizontal bar); return its layout."""
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    scroll.setFrameShape(QScrollArea.NoFrame)
    body = QWidget()
    layout = QVBoxLayout(body)
    layout.setContentsMargins(6, 6, 6, 6)
    scroll.setWidget(body)
    outer.addWidget(scroll)
    return layout
