"""Settings with documented defaults, and the per-user default locations."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

APP_NAME = "napari-casam"

#: Library format version written by this release (see ``casam.library``).
LIBRARY_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LearnSettings:
    """How a task is learned. Defaults are chosen for a 2-core CPU (see README, "Figures").

    The paper's schedule is ``LearnSettings.paper()``: 3 blocks, 24 epochs, batch 6, lr 1e-4.
    """

    blocks: int = 1
    """CAResBlocks in the Alignment Layer (paper: 3; each adds 1.18 M parameters)."""
    epochs: int = 6
    """Passes over the training objects for the Alignment Layer."""
    batch_size: int = 6
    lr: float = 1e-3
    """Adam learning rate of the Alignment Layer (paper: 1e-4), cosine-decayed to 5% of it."""
    box_jitter: float = 0.1
    """Each box side moves by up to this fraction of the box size while training."""
    bf16: bool | None = None
    """Train in bfloat16 autocast; None = when the CPU has native bf16 (AMX/AVX512-BF16)."""
    vae_steps: int = 600
    """Optimiser steps of each VAE (the paper's 10 epochs over ~1,000 images)."""
    vae_batch: int = 32
    vae_lr: float = 5e-4
    vae_hidden: int = 128
    vae_latent: int = 64
    beta: float = 16.5
    temperature: float = 1.0
    folds: int = 5
    percentile: float = 97.0
    holdout: float = 0.2
    """Share of annotated images held out to measure IoU (0 disables; at most ``max_holdout``)."""
    max_holdout: int = 10
    min_images: int = 5
    """Fewer training images than this cannot be calibrated with ``folds``-fold CV."""
    seed: int = 0

    @classmethod
    def paper(cls, **overrides: Any) -> LearnSettings:
        """The schedule of the paper (method.md): 3 blocks, 24 epochs, batch 6, lr 1e-4."""
        base = dict(blocks=3, epochs=24, batch_size=6, lr=1e-4)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def user_data_dir() -> Path:
    """Per-user data folder (``CASAM_HOME`` overrides it)."""
    env = os.environ.get("CASAM_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_library_dir() -> Path:
    """Where the task library lives unless told otherwise (``CASAM_LIBRARY`` overrides it)."""
    env = os.environ.get("CASAM_LIBRARY")
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "library"


def default_cache_dir() -> Path:
    """Per-user cache folder for embeddings kept across sessions."""
    env = os.environ.get("CASAM_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "embeddings"
