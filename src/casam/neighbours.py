"""The default router: how close an image's pooled views lie to each task's stored training views
(exemplar-free: the pooled features a task keeps, never images).

Views of one embedding ``z`` (256, 64, 64): the paper's attention pool (``attn``), the channel
standard deviation (``std``) and the channel maximum (``max``), each L2-normalised. A task's
distance to an image is the mean, over the task's ``k`` nearest stored images, of
``1 - mean_v cos(x_v, ref_v)``: the cosine distance of the concatenated unit views. Its threshold
is ``margin`` x the largest leave-one-out distance among the stored images (each one against the
others, with the same ``k``), so it needs no training and is recomputed from a stored task at
any time (``casam recalibrate``). That *own* threshold is raised to the task's ``knn_floor``
(a cosine distance; 0 for a task learned before the setting existed) where the floor is wider:
one scan's slices lie much closer together than a new patient's lie to them. The image goes to
the task with the smallest distance / threshold ratio when that ratio is at most 1 and either
the distance is within the own threshold or the runner-up's ratio is at least ``knn_separation``
times the best's (:func:`casam.routing.decide`), else to plain SAM.

``k``, the floor and the separation are the task's ``LearnSettings`` (``knn_k``, ``knn_floor``,
``knn_separation``; default k 1: the nearest stored image decides). A task learned before a
setting existed has k 1 and no floor (until ``casam recalibrate`` writes this release's
defaults). A task learned before format 2 stored only ``attn``: it is scored on that view alone
with ``k = 1``, the margin tuned for it and no floor. Margins, ``k``, floor and separation:
``benchmarks/routing.py`` (docs/benchmark-quality.md, "Router designs").
:class:`NeighbourBank` scores every task at once: one matrix product per view count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from casam.routing import RouteDecision, decide

#: The pooled views, in stored order (a task stores a prefix of them: 1 or all 3).
VIEWS = ("attn", "std", "max")
#: Threshold margin by number of views (tuned on validation by benchmarks/routing.py).
MARGINS = {1: 1.75, 3: 2.0}


def pooled_views(z: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """(C, H, W) embedding and its (C,) attention pool -> (3, C) views: attn, std, max."""
    flat = z.float().reshape(z.shape[0], -1)
    return torch.stack([attn.float(), flat.std(1), flat.amax(1)])


def unit(views: torch.Tensor) -> torch.Tensor:
    """(..., V, C) views -> (..., V * C) rows of norm 1: each view L2-normalised, then the
    concatenation scaled by 1/sqrt(V), so a dot product is the mean of the per-view cosines."""
    v = views.float()
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v.flatten(-2) / v.shape[-2] ** 0.5


def _mean_nearest(sim: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) similarities -> (N,) mean distance to the ``k`` most similar (k capped at M)."""
    return 1.0 - sim.topk(min(k, sim.shape[1]), dim=1).values.mean(1)


def leave_one_out(views: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(M, V, C) stored views -> (M,) each one's mean distance to its ``k`` nearest others
    (M >= 2; k capped at M - 1)."""
    u = unit(views)
    sim = u @ u.T
    sim.fill_diagonal_(-float("inf"))
    return _mean_nearest(sim, min(k, views.shape[0] - 1))


def calibrate(views: torch.Tensor, margin: float | None = None, k: int = 1) -> float:
    """A task's distance threshold from its (M, V, C) stored views (M >= 2)."""
    if views.ndim != 3 or views.shape[0] < 2:
        raise ValueError("a neighbour threshold needs at least 2 stored images, views (M, V, C)")
    m = MARGINS[views.shape[1]] if margin is None else margin
    return max(float(leave_one_out(views, k).max()) * m, 1e-6)


def task_k(n_views: int, settings: dict) -> int:
    """The ``k`` a stored task is scored with: its ``knn_k`` setting with every view (1 when it
    was learned before the setting existed), 1 on the attention pool alone (format 1)."""
    return int(settings.get("knn_k", 1)) if n_views == len(VIEWS) else 1


def task_floor(n_views: int, settings: dict) -> tuple[float, float]:
    """(floor, separation) a stored task routes with: its ``knn_floor`` and ``knn_separation``
    with every view; (0, 1), no floor, when it was learned before the settings existed or stores
    the attention pool alone (the floor was tuned on the three views)."""
    if n_views != len(VIEWS):
        return 0.0, 1.0
    return float(settings.get("knn_floor", 0.0)), float(settings.get("knn_separation", 1.0))


class NeighbourBank:
    """Every task's stored unit views, grouped by view count: one product scores all tasks.
    ``ks``: how many nearest stored images each task's distance averages (default 1 each);
    ``floors``: each task's floor, to which its own threshold is raised (default none) and
    ``separations``: the runner-up margin an image accepted by the floor alone needs.
    ``thresholds`` (what ratios divide by) are the raised ones; ``own`` the tasks' own."""

    def __init__(
        self,
        names: Sequence[str],
        views: Sequence[torch.Tensor],
        thresholds: Sequence[float],
        ks: Sequence[int] | None = None,
        floors: Sequence[float] | None = None,
        separations: Sequence[float] | None = None,
    ):
        self.names = list(names)
        self.own = [float(t) for t in thresholds]
        floors = [0.0] * len(self.names) if floors is None else [float(f) for f in floors]
        self.separations = (
            [1.0] * len(self.names) if separations is None else [float(s) for s in separations]
        )
        self.thresholds = torch.tensor(
            [max(t, f) for t, f in zip(self.own, floors, strict=True)], dtype=torch.float32
        )
        self.n_views = [int(v.shape[1]) for v in views]
        self.ks = [1] * len(self.names) if ks is None else [int(k) for k in ks]
        self.groups: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for nv in sorted(set(self.n_views)):
            cols = [j for j, n in enumerate(self.n_views) if n == nv]
            ref = torch.cat([unit(views[j]) for j in cols])
            sizes = [int(views[j].shape[0]) for j in cols]
            # row r of idx: the task's stored rows of ref, padded with len(ref) (similarity -inf)
            idx = torch.full((len(cols), max(sizes)), ref.shape[0], dtype=torch.long)
            starts = torch.tensor([0, *sizes]).cumsum(0)
            for r, m in enumerate(sizes):
                idx[r, :m] = torch.arange(int(starts[r]), int(starts[r]) + m)
            k = torch.tensor([min(self.ks[j], m) for j, m in zip(cols, sizes, strict=True)])
            self.groups.append((nv, ref, idx, k, torch.tensor(cols)))

    def __len__(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def distances(self, views: torch.Tensor) -> torch.Tensor:
        """(N, 3, C) image views -> (N, T) each task's mean distance to its k nearest stored
        images."""
        n = views.shape[0]
        out = torch.empty(n, len(self.names))
        for nv, ref, idx, k, cols in self.groups:
            sim = unit(views[:, :nv]) @ ref.T
            sim = torch.cat([sim, torch.full((n, 1), -float("inf"))], dim=1)
            top = sim[:, idx].topk(int(k.max()), dim=2).values  # (N, T, k max), best first
            keep = torch.arange(top.shape[2]) < k[:, None]
            best = torch.where(keep, top, torch.zeros(())).sum(2) / k
            out[:, cols] = 1.0 - best
        return out

    def ratios(self, views: torch.Tensor) -> torch.Tensor:
        """(N, 3, C) image views -> (N, T) distance / threshold (<= 1: the task accepts)."""
        return self.distances(views) / self.thresholds

    def route(self, views: torch.Tensor) -> RouteDecision:
        """One image's (3, C) views -> the routing decision (smallest ratio, then threshold)."""
        if not self.names:
            return decide([], [], [], router="knn")
        d = self.distances(views[None])[0].tolist()
        return decide(
            self.names,
            d,
            self.thresholds.tolist(),
            router="knn",
            own=self.own,
            separation=self.separations,
        )
