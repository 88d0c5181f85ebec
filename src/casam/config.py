"""Settings with documented defaults, and the per-user default locations."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

APP_NAME = "napari-casam"

#: Library format version written by this release (see ``casam.library``): the folder layout.
LIBRARY_FORMAT_VERSION = 1
#: Newest task format version (``task.json`` and its weight files) this release reads. 2 adds the
#: pooled views ``features_std``/``features_max`` and ``knn_threshold`` (casam.neighbours); 3 adds
#: the adapter kind ``decoder``. A release refuses a task of a newer format with one line; this
#: one reads 1 to 3.
TASK_FORMAT_VERSION = 3
#: The adapter kinds of a task (``LearnSettings.adapter``, ``TaskInfo.adapter``) and the task
#: format each is written with: the oldest that describes it, so a release that reads format 2
#: keeps reading every Alignment Layer task this one writes and refuses only decoder tasks.
ADAPTER_FORMATS = {"alignment": 2, "decoder": 3}
ADAPTER_KINDS = tuple(ADAPTER_FORMATS)
#: What ``LearnSettings.adapter`` may ask for: a kind, or ``"auto"`` (the learner picks one).
ADAPTER_CHOICES = ("auto", *ADAPTER_KINDS)
#: KL weight of the router's VAE (the paper's value); a task stores the one it was trained with.
DEFAULT_BETA = 16.5


@dataclass(frozen=True)
class LearnSettings:
    """How a task is learned. Defaults are chosen for a 2-core CPU (see README, "Figures").

    The paper's schedule is ``LearnSettings.paper()``: 3 blocks, 24 epochs, batch 6, lr 1e-4,
    threshold margin 1.
    """

    adapter: str = "auto"
    """What the task trains on the frozen model: ``"alignment"``, the Alignment Layer on the image
    embedding (CA-SAM; best on organs), or ``"decoder"``, bottleneck adapters inside the mask
    decoder's transformer (SAM-DA style, ``casam.decoder_adapter``; best on lesions). Same
    samples, prompts, schedule and router either way (README, "Two adapter kinds").
    ``"auto"`` (the default): the Alignment Layer, and where its held-out gain over plain SAM
    is under ``auto_gain``, decoder adapters too; the one with the better held-out IoU is kept
    (``TaskInfo.adapter`` says which; benchmarks/quality.py, docs/benchmark-quality.md)."""
    auto_gain: float = 0.02
    """With ``adapter="auto"``: the held-out IoU gain of the Alignment Layer over plain SAM (at
    its chosen strength) under which decoder adapters are trained too (0.02: 2 IoU points; a
    second training at about 0.4x the first's time). Without held-out slices, or when extending
    a task, no second kind is tried."""
    adapter_bottleneck: int = 32
    """Width of each decoder adapter (kind ``"decoder"``: 9 adapters, 150,048 parameters at 32)."""
    blocks: int = 1
    """CAResBlocks in the Alignment Layer (paper: 3; each adds 1.18 M parameters)."""
    epochs: int = 6
    """Passes over the training objects (real and augmented: ``augment``) for the adapter. 6
    with ``augment`` 2 (three times the objects per epoch, about the optimiser steps of 16
    epochs on the real objects alone) since 2026-12-07 (benchmarks/train_augment.py). Before:
    16, which on the quality tasks' validation slices over 3 seeds beat 8 in every seed (paired,
    +0.6 to +1.2 IoU points; organs +3.5) at 1.84x the training time
    (benchmarks/tune_schedule_val.py, docs/benchmark-speed.md); 8 until then."""
    batch_size: int = 6
    lr: float = 1e-3
    """Adam learning rate of the Alignment Layer (paper: 1e-4), cosine-decayed to 5% of it."""
    box_jitter: float = 0.1
    """Each box side moves by up to this fraction of the box size while training."""
    point_share: float = 0.0
    """Share of training batches prompted with their (jittered) box and 1-3 random clicks (the
    first positive inside the mask, the others positive, or negative inside the box but
    outside the mask), as a click comes in the product (with its object's box); the rest use
    the box only. The task then also serves SAM's point prompts (``ClickSession(mode=
    "points")``). Off by default: on the validation organs 0.15 keeps box-only IoU within the
    seed spread (-0.4 points, three seeds) but lowers no NoC@90, 0.3 costs 1.7 points of box
    IoU, and clicks without the box (the first version) 3.9 (docs/benchmark-interactive.md,
    "Training with point prompts"). The product's click rule (``casam.correct``) needs none."""
    augment: int = 2
    """Augmented copies of each training image the adapter also trains on (``casam.augment``:
    intensity window and gamma, noise, a small shift and scale, a left-right flip; the image's
    masks move along; each copy is embedded like a slice). Held-out images are never
    augmented, and the router and its threshold see the real images only. It costs ``augment``
    x the training images in encoder calls and (1 + ``augment``) x the steps per epoch.

    2 (with 6 epochs) since 2026-12-07: on the 6 quality tasks, seeds 0 and 1
    (benchmarks/train_augment.py, decision rule fixed before any test figure), the mean over
    the 4 tasks with held-out slices of (val + augmented val) / 2 went from 75.1 (0 copies, 16
    epochs) to 77.1, no task's val dropping by more than 2 points (mean val 79.6 -> 79.5,
    augmented val 70.6 -> 74.6); 1 copy (77.4) and 2 copies at 16 epochs (78.6) also passed
    but cost more. On the test splits (looked at after the pick) the mean went from 75.4 to
    77.7 and the new-patient CT lung tumour from 64.5 to 67.3 (plain SAM 65.6), but
    microscopy nuclei stayed below plain SAM (86.3 -> 86.8; SAM 88.2). 0: the real images
    only (a task stored without this setting had none)."""
    bf16: bool | None = None
    """Train in bfloat16 autocast; None = when the CPU has native bf16 (AMX/AVX512-BF16)."""
    vae_steps: int = 600
    """Optimiser steps of each VAE (the paper's 10 epochs over ~1,000 images)."""
    vae_batch: int = 32
    vae_lr: float = 5e-4
    vae_hidden: int = 128
    vae_latent: int = 64
    beta: float = DEFAULT_BETA
    temperature: float = 1.0
    folds: int = 5
    percentile: float = 97.0
    threshold_margin: float = 1.5
    """The routing threshold is this many times the ``percentile`` of the ``folds``-fold held-out
    scores (paper: 1.0). A few dozen slices of one or two patients under-state how far a new
    patient's slices score; 1.5 is the strictness sweep's knee (docs/benchmark-quality.md)."""
    knn_margin: float = 2.0
    """The default router's threshold is this many times the largest leave-one-out distance of
    the task's stored images to their nearest others (benchmarks/routing.py tunes it)."""
    knn_k: int = 1
    """The default router scores an image by its mean distance to the task's ``knn_k`` nearest
    stored images (the threshold uses the same k). 1: benchmarks/routing.py's validation keeps
    it (k = 2 accepts more of a new patient's slices but sends augmented validation slices to
    wrong tasks; docs/benchmark-quality.md, "Router designs")."""
    choose_strength: bool = True
    """After training, try the adapter at strengths 0 (plain SAM), 0.25, ..., 1 (as trained) on
    the held-out slices and keep the best (``casam.training.STRENGTHS``): a task is never below
    plain SAM on its own held-out slices. Off, or without held-out slices: as trained."""
    knn_floor: float = 0.0225
    """The default router's threshold is at least this cosine distance (its own, ``knn_margin``
    x the spread, is often far tighter: one scan's slices lie much closer together than another
    patient's lie to them). An image farther than the own threshold but within the floor goes to
    the task only when the runner-up is clearly farther (``knn_separation``; with one task in
    the library there is no runner-up and the floor alone decides). 0 turns it off. Tuned for
    LiteMedSAM's pooled views on libraries of every size, 1 to 8 tasks
    (benchmarks/routing_libsizes.py; 0.0275, tuned on 8-task libraries alone, let small
    libraries take other modalities' slices and unseen kinds: docs/benchmark-quality.md)."""
    knn_separation: float = 1.1
    """An image accepted by the floor alone needs the runner-up task's distance / threshold ratio
    to be at least this many times the best task's; else plain SAM (too close to call)."""
    holdout: float = 0.2
    """Share of annotated images held out to measure IoU (0 disables; at most ``max_holdout``)."""
    max_holdout: int = 10
    min_images: int = 5
    """Fewer training images than this cannot be calibrated with ``folds``-fold CV."""
    seed: int = 0

    def __post_init__(self) -> None:
        from casam.errors import InputError

        rules = [
            ("adapter", self.adapter in ADAPTER_CHOICES, f"one of {', '.join(ADAPTER_CHOICES)}"),
            ("auto-gain", 0 <= self.auto_gain <= 1, "in [0, 1]"),
            ("adapter-bottleneck", 1 <= self.adapter_bottleneck <= 256, "in [1, 256]"),
            ("blocks", self.blocks >= 1, "at least 1"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("augment", 0 <= self.augment <= 16, "between 0 and 16"),
            ("batch-size", self.batch_size >= 1, "at least 1"),
            ("lr", 0 < self.lr < 1, "between 0 and 1"),
            ("vae-steps", self.vae_steps >= 1, "at least 1"),
            ("vae-batch", self.vae_batch >= 1, "at least 1"),
            ("vae-lr", 0 < self.vae_lr < 1, "between 0 and 1"),
            ("vae-hidden", self.vae_hidden >= 1, "at least 1"),
            ("vae-latent", self.vae_latent >= 1, "at least 1"),
            ("beta", self.beta > 0, "positive"),
            ("temperature", self.temperature > 0, "positive"),
            ("folds", self.folds >= 2, "at least 2"),
            ("percentile", 0 < self.percentile <= 100, "in (0, 100]"),
            ("threshold-margin", 0 < self.threshold_margin <= 10, "in (0, 10]"),
            ("knn-margin", 0 < self.knn_margin <= 10, "in (0, 10]"),
            ("knn-k", 1 <= self.knn_k <= 10, "between 1 and 10"),
            ("knn-floor", 0 <= self.knn_floor < 0.5, "in [0, 0.5)"),
            ("knn-separation", 1 <= self.knn_separation <= 10, "in [1, 10]"),
            ("holdout", 0 <= self.holdout < 1, "in [0, 1)"),
            ("max-holdout", self.max_holdout >= 0, "at least 0"),
            ("min-images", self.min_images >= self.folds, f"at least folds ({self.folds})"),
            ("box-jitter", 0 <= self.box_jitter < 1, "in [0, 1)"),
            ("point-share", 0 <= self.point_share <= 1, "in [0, 1]"),
        ]
        for name, ok, what in rules:
            if not ok:
                field_ = name.replace("-", "_")
                raise InputError(
                    f"setting {field_} must be {what}; got {getattr(self, field_)}",
                    subject=field_,
                )

    @classmethod
    def paper(cls, **overrides: Any) -> LearnSettings:
        """The paper's method (method.md): the Alignment Layer with 3 blocks, 24 epochs, batch
        6, lr 1e-4, the real images only (no augmented copies), and the threshold at the plain
        97th percentile (no margin)."""
        base = dict(
            adapter="alignment",
            blocks=3,
            epochs=24,
            batch_size=6,
            lr=1e-4,
            threshold_margin=1.0,
            augment=0,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnSettings:
        known = {f.name for f in fields(cls)}
        # a task stored before ``augment`` existed was learned from its real images only, and
        # one stored before ``adapter`` existed has an Alignment Layer
        old = {"augment": 0, "adapter": "alignment"}
        return cls(**{**old, **{k: v for k, v in d.items() if k in known}})


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
