"""Point prompts and SAM's ``mask_input``: checking them and decoding box + points + logits.

Conventions: points are XY in original-image pixels (x = column, y = row; a click on pixel
(row r, column c) is the point (c, r)); labels are 1 (positive, "this is the object") or 0
(negative, "this is not"). ``mask_input`` is the previous prediction's low-resolution logits,
(1, 256, 256) in the decoder's frame, exactly what a :class:`casam.predictor.Prediction` returns
in ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from casam.backbones import LOWRES
from casam.errors import InputError
from casam.preprocess import Geometry


def check_points(
    points: np.ndarray | Sequence | None,
    labels: np.ndarray | Sequence | None,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate XY points (original pixels) and their 0/1 labels against an (H, W) image.

    ``labels`` None means every point is positive. Returns (P, 2) float64 and (P,) int64; P may
    be 0. A point outside the image is refused with a message naming it (no clipping: a click
    outside the image is a mistake, not a prompt).
    """
    if points is None or (not isinstance(points, np.ndarray) and len(points) == 0):
        return np.zeros((0, 2)), np.zeros((0,), dtype=np.int64)
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"points must be numbers X Y, got {points!r}") from None
    if p.ndim == 1 and p.size == 2:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2:
        raise InputError(f"points must have shape (P, 2) as X Y, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise InputError("a point has a NaN or infinite coordinate")
    if labels is None:
        lab = np.ones(len(p), dtype=np.int64)
    else:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape[0] != p.shape[0]:
            raise InputError(f"{p.shape[0]} points but {lab.shape[0]} labels: one label a point")
        if not np.isin(lab, (0, 1)).all():
            raise InputError(f"point labels must be 1 (positive) or 0 (negative), got {lab}")
        lab = lab.astype(np.int64)
    for i, (x, y) in enumerate(p):
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"point {i} ({x:g}, {y:g}) lies outside the {width}x{height} image "
                f"(X in 0..{width - 1}, Y in 0..{height - 1})"
            )
    return p, lab


def check_mask_input(mask_input: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    """Previous low-res logits -> (1, 1, 256, 256) float32 tensor (or None)."""
    if mask_input is None:
        return None
    m = torch.as_tensor(np.asarray(mask_input, dtype=np.float32))
    if m.numel() != LOWRES * LOWRES:
        raise InputError(
            f"mask_input must be the previous prediction's ({LOWRES}, {LOWRES}) low-res logits, "
            f"got shape {tuple(m.shape)}"
        )
    if not torch.isfinite(m).all():
        raise InputError("mask_input has NaN/Inf values")
    return m.reshape(1, 1, LOWRES, LOWRES)


def points_to_input(geo: Geometry, points: np.ndarray) -> np.ndarray:
    """XY points in original pixels -> the backbone's S x S input frame, (P, 2) float32."""
    rh, rw = geo.resized
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2).copy()
    p[:, 0] *= rw / geo.width
    p[:, 1] *= rh / geo.height
    return p.astype(np.float32)


def sample_points(
    targets: torch.Tensor, boxes: torch.Tensor, input_size: int, gen: torch.Generator, most: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training clicks: (B, most, 2) points in the input frame and (B, most) labels.

    ``targets`` (B, 256, 256) low-res masks, ``boxes`` (B, 4) in the input frame. Each object gets
    1..``most`` clicks, each positive (a mask pixel) with probability 3/4, else negative (a pixel
    inside the box but outside the mask); the first is always positive. Unused slots have label
    -1 (SAM's "not a point").
    """
    b = targets.shape[0]
    scale = input_size / targets.shape[-1]
    pts = torch.zeros(b, most, 2)
    lab = -torch.ones(b, most, dtype=torch.int64)
    ys, xs = torch.meshgrid(
        torch.arange(targets.shape[1]), torch.arange(targets.shape[2]), indexing="ij"
    )
    for i in range(b):
        fg = targets[i] > 0.5
        bx = boxes[i] / scale
        inside = (xs >= bx[0]) & (xs < bx[2]) & (ys >= bx[1]) & (ys < bx[3])
        pools = (fg.nonzero(), (inside & ~fg).nonzero())
        n = int(torch.randint(1, most + 1, (1,), generator=gen))
        for j in range(n):
            positive = j == 0 or bool(torch.rand(1, generator=gen) < 0.75)
            pool = pools[0] if positive or len(pools[1]) == 0 else pools[1]
            if len(pool) == 0:
                break
            r, c = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            pts[i, j] = torch.tensor([float(c), float(r)]) * scale
            lab[i, j] = int(positive or len(pools[1]) == 0)
    return pts, lab
