"""Pixels in, pixels out: intensity scaling, the resize/pad geometry, boxes and masks.

Intensity (documented in the README):
- ``uint8`` (and ``bool``) images are taken as they are (``/255``): photographs, JPEG/PNG
  exports and already-windowed slices look the way the user sees them.
- Every other dtype (``uint16``, signed CT values, floats) is windowed to the 0.5th..99.5th
  percentile of its finite pixels, then clipped to [0, 1]. Percentiles make the window robust
  to a few hot pixels, padding values such as -3024 HU, and to any scanner's units.
- Grayscale is repeated into three channels; RGBA loses its alpha channel.

Geometry: the longest side is resized to the backbone's input size ``S`` (keeping the aspect
ratio, as segment_anything's ``ResizeLongestSide``), the rest is padded bottom/right with zeros.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from casam.errors import InputError

MIN_SIDE = 8
PERCENTILES = (0.5, 99.5)


class CasamWarning(UserWarning):
    """Something was fixed up on the user's behalf (alpha dropped, NaNs filled...)."""


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate a 2-D grayscale or RGB(A) image; returns it as (H, W) or (H, W, 3)."""
    a = np.asarray(image)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise InputError(f"{what} has pixel type {a.dtype}; give numbers (integers or floats)")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        warnings.warn(f"{what} is RGBA: its alpha channel was ignored", CasamWarning, stacklevel=3)
        a = a[..., :3]
    if a.ndim == 3 and a.shape[-1] == 2:
        raise InputError(f"{what} has 2 channels (shape {a.shape}); give grayscale or RGB")
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] > 4:
        raise InputError(
            f"{what} has shape {a.shape}, channels first; give (H, W) or (H, W, 3) with channels "
            "last"
        )
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise InputError(
            f"{what} has shape {a.shape}; expected a 2-D slice (H, W) or RGB (H, W, 3) — "
            "split volumes into slices first"
        )
    h, w = a.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"{what} is {h}x{w} pixels; it must be at least {MIN_SIDE}x{MIN_SIDE}")
    return a


def to_unit_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Scale any supported image to float32 RGB in [0, 1], shape (H, W, 3)."""
    a = check_image(image, what)
    if a.dtype in (np.uint8, np.bool_):
        x = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        if x.max() == x.min():
            raise InputError(
                f"{what} is constant (every pixel is {a.flat[0]}): there is nothing to segment"
            )
    else:
        x = a.astype(np.float32, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            if not finite.any():
                raise InputError(f"{what} has no finite pixel (all NaN/Inf)")
            fill = float(np.min(x[finite]))
            warnings.warn(
                f"{what} has {int((~finite).sum())} NaN/Inf pixels; they were set to its minimum",
                CasamWarning,
                stacklevel=2,
            )
            x = np.where(finite, x, fill)
        lo, hi = np.percentile(x, PERCENTILES)
        if hi <= lo:
            lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            raise InputError(
                f"{what} is constant (every pixel is {lo:g}): there is nothing to segment"
            )
        x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class Geometry:
    """How an (H, W) image sits inside the backbone's S x S input."""

    height: int
    width: int
    size: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise InputError(
                f"image is {self.height}x{self.width} pixels; it has no pixels to segment"
            )
        rh, rw = self.resized
        if rh < 1 or rw < 1:
            raise InputError(
                f"image is {self.height}x{self.width} pixels, too elongated for the model's "
                f"{self.size}x{self.size} input; crop it closer to square"
            )

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        """(h, w) of the image inside the padded input (segment_anything's rounding)."""
        s = self.scale
        return int(self.height * s + 0.5), int(self.width * s + 0.5)

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """XYXY boxes in original pixels (already validated) -> the S x S input frame."""
        rh, rw = self.resized
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] *= rw / self.width
        b[:, [1, 3]] *= rh / self.height
        return b.astype(np.float32)

    def boxes_from_input(self, boxes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`boxes_to_input`."""
        rh, rw = self.resized
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] *= self.width / rw
        b[:, [1, 3]] *= self.height / rh
        return b


def check_boxes(boxes: np.ndarray | list, height: int, width: int) -> np.ndarray:
    """Validate XYXY boxes (original pixels) against an image; clip to it.

    A box partly outside the image is clipped; one wholly outside, of zero area, or inverted
    (x0 > x1 or y0 > y1) is refused with a message naming it.
    """
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"boxes must be numbers X0 Y0 X1 Y1, got {boxes!r}") from None
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0:
        raise InputError(f"boxes must have shape (N, 4) as X0 Y0 X1 Y1, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise InputError("a box has a NaN or infinite coordinate")
    out = b.copy()
    for i, (x0, y0, x1, y1) in enumerate(b):
        name = f"box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if x1 < x0 or y1 < y0:
            raise InputError(f"{name} is inverted: give X0 Y0 X1 Y1 with X0 <= X1 and Y0 <= Y1")
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise InputError(f"{name} has zero area: draw a box at least 1 pixel wide and high")
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, float(width)), min(y1, float(height))
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            raise InputError(f"{name} lies outside the {width}x{height} image")
        out[i] = (cx0, cy0, cx1, cy1)
    return out


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a 2-D mask's foreground (x1, y1 exclusive: pixel edges)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError("mask has no foreground: there is no object to take a box from")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
