"""Augmented copies of an annotated slice: what changes between patients of one kind.

An intensity window and gamma, noise, a small shift and scale and a left-right flip (p = 0.5);
the masks move with the image. ``benchmarks/routing_data.py`` scores routers and adapters on
such copies of held-out slices (a new-patient proxy), and ``LearnSettings.augment`` trains the
adapter on copies of the training slices as well.

The copy is float32 in about [0, 1] (the window's output, plus noise); ``casam.preprocess``
windows any non-``uint8`` image again to its 0.5th..99.5th percentile, so a copy of a CT slice
in HU is embedded the way the slice itself is, while a copy of a ``uint8`` image (taken as is,
``/255``) is contrast-stretched to its percentiles: one more intensity change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def augment_masks(
    image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One random variant of ``image`` and each of ``masks`` (binary) moved with it (nearest
    neighbour, outside the image: background). The draws do not depend on the masks."""
    from skimage.transform import AffineTransform, warp

    x = np.asarray(image).astype(np.float64)
    lo, hi = np.percentile(x, [rng.uniform(0, 3), rng.uniform(97, 100)])
    u = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1) ** rng.uniform(0.7, 1.4)
    u = u + rng.normal(0, rng.uniform(0.0, 0.03), u.shape)
    h, w = u.shape[:2]
    s = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.05, 0.05, 2) * (w, h)
    c = np.array([w / 2, h / 2])
    tf = AffineTransform(scale=s, translation=c - s * c + shift)
    u = warp(u, tf.inverse, mode="edge", preserve_range=True)
    moved = [
        warp(np.asarray(m, float), tf.inverse, order=0, mode="constant", cval=0.0) > 0.5
        for m in masks
    ]
    if rng.random() < 0.5:
        u = u[:, ::-1]
        moved = [m[:, ::-1] for m in moved]
    moved = [np.ascontiguousarray(m) for m in moved]
    return np.ascontiguousarray(u.astype(np.float32)), moved


def augment_pair(
    image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """``augment_masks`` with one mask (or none: the same draws, so the same image)."""
    u, moved = augment_masks(image, [] if mask is None else [mask], rng)
    return u, (moved[0] if mask is not None else None)


def copy_rng(seed: int, image: int, copy: int) -> np.random.Generator:
    """The generator of copy ``copy`` of training image ``image``: the same copy whatever the
    number of copies, so a run with more copies re-uses the embeddings of one with fewer."""
    return np.random.default_rng([seed, image, copy])
