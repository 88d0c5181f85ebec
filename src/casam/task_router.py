"""A task's router: fitted when the task is learned, recalibrated from its stored features.

Learning stores, per training image, the pooled views of :mod:`casam.neighbours` (never the
image) and fits the paper's VAE on the attention-pooled one; two thresholds are calibrated:
``TaskInfo.knn_threshold`` (the default router) and ``TaskInfo.threshold`` (the paper's VAE
rule). :func:`recalibrate` recomputes both from what a stored task holds (no images), so a task
of format 1 (attention-pooled features only) gets a neighbour threshold on that one view.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from casam.config import LearnSettings
from casam.neighbours import VIEWS, calibrate
from casam.progress import Progress
from casam.router import fit_router
from casam.routing import calibrated_threshold
from casam.task_tensors import stored_views

if TYPE_CHECKING:
    from casam.library import LoadedTask, TaskInfo


def fit_task_router(feats: torch.Tensor, s: LearnSettings) -> tuple[Any, float]:
    """The task's VAE on its (N, 256) features and its routing threshold (with the margin)."""
    vae, fold_threshold, _ = fit_router(
        feats,
        folds=s.folds,
        percentile=s.percentile,
        seed=s.seed,
        beta=s.beta,
        steps=s.vae_steps,
        batch=s.vae_batch,
        lr=s.vae_lr,
        hidden=s.vae_hidden,
        latent=s.vae_latent,
    )
    return vae, calibrated_threshold(fold_threshold, s.threshold_margin)


def knn_threshold(views: torch.Tensor, s: LearnSettings) -> float:
    """The neighbour threshold of (N, V, 256) stored views: ``s.knn_margin`` and ``s.knn_k``
    with every view; the margin tuned for the attention pool alone, k = 1, on a task of format 1."""
    if views.shape[1] == len(VIEWS):
        return calibrate(views, s.knn_margin, s.knn_k)
    return calibrate(views)


@dataclass(frozen=True)
class FittedRouter:
    """What learning stores for routing: the VAE, its threshold, the views, the kNN threshold."""

    vae: Any
    threshold: float
    views: torch.Tensor
    knn_threshold: float


def router_stage(
    emb: dict, order: list[int], previous: LoadedTask | None, s: LearnSettings
) -> Generator[Any, None, FittedRouter]:
    """The router on the training images' pooled views (and an extended task's stored ones;
    an extended task of format 1 keeps the attention pool only)."""
    views = torch.stack([emb[i].views for i in order]).float()
    if previous is not None:
        old = stored_views(previous.router)
        views = torch.cat([old, views[:, : old.shape[1]]])
    yield Progress("vae", 0, 1, message=f"VAE and {s.folds}-fold threshold")
    vae, threshold = fit_task_router(views[:, 0].contiguous(), s)
    knn = knn_threshold(views, s)
    yield Progress("vae", 1, 1, message=f"threshold {threshold:.4g}")
    return FittedRouter(vae, threshold, views, knn)


def recalibrate(task: LoadedTask) -> TaskInfo:
    """The task's metadata with both thresholds recomputed from its stored features, with the
    task's own settings (its ``knn_k`` is written into them: 1 for a task learned before the
    setting existed; its ``knn_floor`` and ``knn_separation``: this release's defaults for a
    task learned before they existed; the VAE's folds are trained again: a few seconds)."""
    s = LearnSettings.from_dict(task.info.settings)
    views = stored_views(task.router)
    _, threshold = fit_task_router(views[:, 0].contiguous(), s)
    return task.info.with_(
        threshold=threshold,
        knn_threshold=knn_threshold(views, s),
        settings={
            **task.info.settings,
            "knn_k": s.knn_k,
            "knn_floor": s.knn_floor,
            "knn_separation": s.knn_separation,
        },
    )
