"""The default router: how close an image's pooled views lie to each task's stored training views
(exemplar-free: the pooled features a task keeps, never images).

Views of one embedding ``z`` (256, 64, 64): the paper's attention pool (``attn``), the channel
standard deviation (``std``) and the channel maximum (``max``), each L2-normalised. A task's
distance to an image is ``1 - max_m mean_v cos(x_v, ref_mv)`` over its M stored images: the
cosine distance of the concatenated unit views to the nearest stored image. Its threshold is
``margin`` x the largest leave-one-out nearest distance among the stored images (each one
against the others), so it needs no training and is recomputed from a stored task at any time
(``casam recalibrate``). The image goes to the task with the smallest distance / threshold
ratio when that ratio is at most 1, else to plain SAM.

A task learned before format 2 stored only ``attn``: it is scored on that view alone, with the
margin tuned for it. Margins: ``benchmarks/routing.py`` (docs/benchmark-quality.md, "Router
designs"). :class:`NeighbourBank` scores every task at once: one matrix product per view count.
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


def leave_one_out(views: torch.Tensor) -> torch.Tensor:
    """(M, V, C) stored views -> (M,) each one's distance to its nearest other (M >= 2)."""
    u = unit(views)
    sim = u @ u.T
    sim.fill_diagonal_(-float("inf"))
    return 1.0 - sim.amax(dim=1)


def calibrate(views: torch.Tensor, margin: float | None = None) -> float:
    """A task's distance threshold from its (M, V, C) stored views (M >= 2)."""
    if views.ndim != 3 or views.shape[0] < 2:
        raise ValueError("a neighbour threshold needs at least 2 stored images, views (M, V, C)")
    m = MARGINS[views.shape[1]] if margin is None else margin
    return max(float(leave_one_out(views).max()) * m, 1e-6)


class NeighbourBank:
    """Every task's stored unit views, grouped by view count: one product scores all tasks."""

    def __init__(
        self, names: Sequence[str], views: Sequence[torch.Tensor], thresholds: Sequence[float]
    ):
        self.names = list(names)
        self.thresholds = torch.tensor(list(thresholds), dtype=torch.float32)
        self.n_views = [int(v.shape[1]) for v in views]
        self.groups: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for nv in sorted(set(self.n_views)):
            cols = [k for k, n in enumerate(self.n_views) if n == nv]
            ref = torch.cat([unit(views[k]) for k in cols])
            owner = torch.cat(
                [torch.full((views[k].shape[0],), j, dtype=torch.long) for j, k in enumerate(cols)]
            )
            self.groups.append((nv, ref, owner, torch.tensor(cols)))

    def __len__(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def distances(self, views: torch.Tensor) -> torch.Tensor:
        """(N, 3, C) image views -> (N, T) distance to each task's nearest stored image."""
        n = views.shape[0]
        out = torch.empty(n, len(self.names))
        for nv, ref, owner, cols in self.groups:
            sim = unit(views[:, :nv]) @ ref.T
            best = torch.full((n, len(cols)), -2.0).scatter_reduce(
                1, owner.expand(n, -1), sim, reduce="amax"
            )
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
        return decide(self.names, d, self.thresholds.tolist(), router="knn")
