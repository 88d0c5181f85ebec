"""IoU and Boundary IoU (Cheng et al., 2021) of binary masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape}")
    union = np.logical_or(p, g).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum() / union)


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels (chessboard distance) of its outside.

    The outside includes the image border, as in the reference implementation (zero padding).
    """
    m = np.pad(np.asarray(mask, bool), 1)
    inner = ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), iterations=width)
    return (m & ~inner)[1:-1, 1:-1]


def band_width(shape: tuple[int, int], ratio: float = 0.02) -> int:
    """Boundary band width: ``ratio`` of the image diagonal, at least one pixel."""
    return max(1, int(round(ratio * float(np.hypot(*shape[:2])))))


def boundary_iou(pred: np.ndarray, gt: np.ndarray, ratio: float = 0.02) -> float:
    """Boundary IoU with a band of ``ratio`` x image diagonal; 1.0 when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape}")
    d = band_width(p.shape, ratio)
    return iou(boundary_band(p, d), boundary_band(g, d))
