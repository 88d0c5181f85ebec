"""The annotated objects a task is learned from: (image, mask) pairs checked and split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from casam.config import LearnSettings
from casam.errors import InputError
from casam.preprocess import check_image


@dataclass(frozen=True)
class Sample:
    """One annotated object: the image it is in and its binary mask."""

    image: int
    mask: np.ndarray


def objects_of(mask: np.ndarray, label: int | None = None) -> list[np.ndarray]:
    """Binary masks of the objects of a label image: each nonzero value (or just ``label``)."""
    m = np.asarray(mask)
    if m.dtype.kind == "f":
        if not np.isfinite(m).all():
            raise InputError("mask has NaN/Inf values; masks must hold integer labels")
        m = m.astype(np.int64)
    if label is not None:
        fg = m == label
        return [fg] if fg.any() else []
    if m.dtype == bool:
        return [m] if m.any() else []
    values = np.unique(m)
    return [m == v for v in values if v != 0]


def collect_samples(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    label: int | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[int], list[Sample]]:
    """Validate (image, mask) pairs; return the indices of images with objects and the objects."""
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    used, samples = [], []
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        what = names[i] if names else f"image {i}"
        a = check_image(img, what)
        m = np.asarray(msk)
        if m.ndim == 3 and m.shape[-1] in (3, 4) and m.shape[:2] == a.shape[:2]:
            m = m[..., 0]
        if m.shape != a.shape[:2]:
            raise InputError(
                f"{what} is {a.shape[0]}x{a.shape[1]} but its mask is "
                f"{'x'.join(map(str, m.shape))}; they must match"
            )
        objs = objects_of(m, label)
        if objs:
            used.append(i)
            samples.extend(Sample(i, o) for o in objs)
    return used, samples


def split_holdout(n: int, settings: LearnSettings) -> tuple[list[int], list[int]]:
    """Evenly spaced held-out images (representative of a volume's extent); the rest train."""
    n_hold = min(settings.max_holdout, int(n * settings.holdout))
    if n - n_hold < settings.min_images:
        n_hold = max(0, n - settings.min_images)
    if n_hold == 0:
        return list(range(n)), []
    held = sorted({int(round(x)) for x in np.linspace(0, n - 1, n_hold + 2)[1:-1]})
    return [i for i in range(n) if i not in held], held
