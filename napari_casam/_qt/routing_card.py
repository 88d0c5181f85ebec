"""The routing card: which task handles the slice in view, and how sure the router is."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from napari_casam._texts import TIPS, RouteText, describe_route

_COLORS = {
    "task": "#2e7d32",
    "fallback": "#8d6e00",
    "override": "#1565c0",
    "unknown": "#616161",
}


class RoutingCard(QFrame):
    """Shows a :class:`~napari_casam._texts.RouteText` in the task's colour."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("casamRoutingCard")
        self.setFrameShape(QFrame.StyledPanel)
        self.setToolTip(TIPS["card"])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(2)
        self.where = QLabel("")
        self.where.setStyleSheet("color: #9e9e9e;")
        self.where.setWordWrap(True)
        self.headline = QLabel("")
        self.headline.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.headline.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.headline.setWordWrap(True)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextSelectableByMouse)
        for w in (self.where, self.headline, self.detail):
            layout.addWidget(w)
        self.text = RouteText("", "", "unknown")
        self._color = ""
        self.show_text(describe_route(None), "")

    def show_text(self, text: RouteText, where: str) -> None:
        """Show ``text``; only what changed is set (a style sheet restyles every child)."""
        self.text = text
        for label, value in zip(
            (self.where, self.headline, self.detail),
            (where, text.headline, text.detail),
            strict=True,
        ):
            if label.text() != value:
                label.setText(value)
        color = _COLORS.get(text.kind, _COLORS["unknown"])
        if color == self._color:
            return
        self._color = color
        r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
        self.setStyleSheet(
            f"#casamRoutingCard {{ border: 2px solid {color}; border-radius: 6px; "
            f"background-color: rgba({r}, {g}, {b}, 90); }}"
        )
