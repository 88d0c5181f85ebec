"""The routing decision the dock shows: ONE value, replaced as a whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_casam._layers import Index
from napari_casam._texts import AUTO, RouteText, describe_route


@dataclass(frozen=True)
class RouteState:
    """Routing of one plane of one image (``decision`` None: not routed yet)."""

    token: str | None = None
    index: Index | None = None
    decision: Any = None
    """A ``casam.RouteDecision`` computed in a worker, never read from the predictor here."""
    error: str | None = None

    def text(self, override: str = AUTO, auto_route: bool = False) -> RouteText:
        if self.error is not None:
            return RouteText("Not routed", self.error, "unknown")
        return describe_route(self.decision, override, auto_route)

    def is_for(self, token: str | None, index: Index) -> bool:
        return self.token == token and self.index == index
