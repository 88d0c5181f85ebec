"""A second opinion for the router: how close an image's pooled feature lies to the task's own
stored training features (exemplar-free: the pooled features a task already keeps, never images).

Score: cosine distance to the nearest stored feature. Threshold: ``margin`` x the ``percentile``
of the leave-one-out nearest distances among the stored features (each one scored against the
others), so it needs no training and can be recomputed from a stored task at any time
(``casam recalibrate``). Scores of a batch of images against every task cost one matrix
product per task: (N, D) x (D, M).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def _unit(f: torch.Tensor) -> torch.Tensor:
    f = f.float()
    return f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def nearest_distance(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(N, D) features, (M, D) stored features -> (N,) cosine distance to the nearest one."""
    return 1.0 - (_unit(x) @ _unit(ref).T).amax(dim=1)


def leave_one_out(ref: torch.Tensor) -> torch.Tensor:
    """(M, D) stored features -> (M,) each one's cosine distance to its nearest other (M >= 2)."""
    u = _unit(ref)
    sim = u @ u.T
    sim.fill_diagonal_(-float("inf"))
    return 1.0 - sim.amax(dim=1)


@dataclass(frozen=True)
class NeighbourCheck:
    """One task's stored features (unit rows, (M, D)) and its distance threshold."""

    ref: torch.Tensor
    threshold: float

    @classmethod
    def from_features(
        cls, features: torch.Tensor, margin: float = 1.5, percentile: float = 100.0
    ) -> NeighbourCheck:
        """Calibrate from a task's (M, D) training features (M >= 2)."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError("a neighbour check needs at least 2 stored features, shape (M, D)")
        loo = leave_one_out(features).double().numpy()
        tau = float(np.percentile(loo, percentile)) * margin
        return cls(_unit(features), max(tau, 1e-6))

    @torch.no_grad()
    def ratio(self, f: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N,) nearest distance as a fraction of the threshold (<= 1: near)."""
        return (1.0 - (_unit(f) @ self.ref.T).amax(dim=1)) / self.threshold


def route_ratios(
    ratios: torch.Tensor, names: Sequence[str]
) -> list[tuple[str | None, str | None, float]]:
    """(N, T) score / threshold ratios -> per image (task or None, best task, best ratio).

    The image goes to the task with the smallest ratio when it is at most 1, else to plain SAM.
    """
    if ratios.shape[1] == 0:
        return [(None, None, float("nan"))] * ratios.shape[0]
    best = ratios.argmin(dim=1)
    out = []
    for k, j in enumerate(best.tolist()):
        r = float(ratios[k, j])
        out.append((names[j] if r <= 1.0 else None, names[j], r))
    return out
