"""Which masks to doubt: SAM's own quality estimate is low, or the mask is tiny in its box."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_casam._session import Segmented

#: A mask is "low confidence" below this SAM IoU estimate, or below this fraction of its box.
LOW_SCORE = 0.5
LOW_FILL = 0.05


def low_confidence(res: Segmented) -> list[int]:
    """Which masks of a result to check: SAM's own IoU estimate is low, or the mask is tiny
    against its box (a box over empty air)."""
    out = []
    for i, m in enumerate(np.asarray(res.masks, dtype=bool)):
        score = float(res.scores[i]) if i < len(res.scores) else 1.0
        fill = 1.0
        if res.boxes is not None and i < len(res.boxes):
            x0, y0, x1, y1 = res.boxes[i]
            fill = m.sum() / max((x1 - x0 + 1) * (y1 - y0 + 1), 1.0)
        if score < LOW_SCORE or fill < LOW_FILL:
            out.append(i)
    return out
