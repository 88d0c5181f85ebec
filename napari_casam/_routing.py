"""The routing card: which task handles the slice in view, and how sure the router is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

AUTO = "auto"
SAM = "sam"

_COLORS = {
    "task": "#2e7d32",
    "fallback": "#8d6e00",
    "override": "#1565c0",
    "unknown": "#616161",
}


@dataclass(frozen=True)
class RouteText:
    headline: str
    detail: str
    kind: str
    """"task", "fallback", "override" or "unknown" (chooses the colour)."""


def _num(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "?"
    return "n/a" if math.isnan(v) else f"{v:.3g}"


def describe_route(route: Any, override: str = AUTO) -> RouteText:
    """Words for a ``casam.RouteDecision`` (or None: not routed yet) and the user's override.

    ``override`` is "auto" (follow the router), "sam" (plain SAM) or a task name.
    """
    if route is None:
        router = "not computed yet"
    else:
        router = str(route)
    if override == SAM:
        return RouteText("Plain SAM (your choice)", f"Router: {router}", "override")
    if override != AUTO:
        return RouteText(f"{override} (your choice)", f"Router: {router}", "override")
    if route is None:
        return RouteText(
            "Not routed yet",
            "The slice in view is routed once its embedding is computed "
            "(draw a box, or turn on “Route the slice in view”).",
            "unknown",
        )
    threshold = getattr(route, "threshold", None)
    best = getattr(route, "best", None) or getattr(route, "task", None)
    if getattr(route, "fallback", True) or route.task is None:
        if best is None:
            return RouteText("SAM fallback", "No task learned for this model yet.", "fallback")
        return RouteText(
            "SAM fallback",
            f"Closest task: {best} · ELBO {_num(route.score)} > threshold {_num(threshold)}",
            "fallback",
        )
    return RouteText(
        route.task,
        f"ELBO {_num(route.score)} ≤ threshold {_num(threshold)}",
        "task",
    )


class RoutingCard(QFrame):
    """Shows a :class:`RouteText` in the task's colour."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("casamRoutingCard")
        self.setFrameShape(QFrame.StyledPanel)
        self.setToolTip(
            "Which learned task segments the slice in view. The router scores the image "
            "embedding with each task's VAE (ELBO, lower = more familiar); a score above "
            "the task's threshold means the image is unlike its training images, and plain "
            "SAM is used instead (SAM fallback)."
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(2)
        self.where = QLabel("")
        self.where.setStyleSheet("color: #9e9e9e;")
        self.headline = QLabel("")
        self.headline.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextSelectableByMouse)
        for w in (self.where, self.headline, self.detail):
            layout.addWidget(w)
        self.text = RouteText("", "", "unknown")
        self.show_text(describe_route(None), "")

    def show_text(self, text: RouteText, where: str) -> None:
        self.text = text
        color = _COLORS.get(text.kind, _COLORS["unknown"])
        self.where.setText(where)
        self.headline.setText(text.headline)
        self.headline.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.detail.setText(text.detail)
        r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
        self.setStyleSheet(
            f"#casamRoutingCard {{ border: 2px solid {color}; border-radius: 6px; "
            f"background-color: rgba({r}, {g}, {b}, 90); }}"
        )
