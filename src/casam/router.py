"""The VAE router: attention pooling, one small VAE per task, calibrated thresholds.

A task's score of an image is its VAE's negative ELBO on the image's pooled embedding
feature ``f`` (deterministic: the encoder's mean is decoded, no sampling). The image goes to
the task with the lowest score if that score is within the task's threshold; otherwise to
plain SAM. All VAEs of a library are evaluated as one batched computation (``VAEBank``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from casam.backbones import EMBED_DIM
from casam.routing import RouteDecision, decide
from casam.task_tensors import VAE_LAYERS

__all__ = ["VAE", "VAEBank", "RouteDecision", "attention_pool", "fit_router", "train_vaes"]


def attention_pool(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) or (C, H, W) embeddings -> (N, C) or (C,) features (no parameters).

    ``a_hw = softmax_hw(||z[:, h, w]||_2 / (C * T))``, ``f = sum_hw a_hw z[:, h, w]``.
    """
    single = z.dim() == 3
    if single:
        z = z[None]
    n, c = z.shape[:2]
    flat = z.reshape(n, c, -1).float()
    a = torch.softmax(flat.norm(dim=1) / (c * temperature), dim=-1)
    f = torch.einsum("ncl,nl->nc", flat, a)
    return f[0] if single else f


class VAE(nn.Module):
    """Two-layer MLP encoder and decoder, Gaussian latent."""

    def __init__(self, dim: int = EMBED_DIM, hidden: int = 128, latent: int = 64):
        super().__init__()
        self.enc1 = nn.Linear(dim, hidden)
        self.enc2 = nn.Linear(hidden, 2 * latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, dim)
        self.latent = latent

    def encode(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc2(torch.relu(self.enc1(f))).chunk(2, dim=-1)
        return mu, logvar.clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec2(torch.relu(self.dec1(z)))

    def neg_elbo(self, f: torch.Tensor, beta: float, sample: bool) -> torch.Tensor:
        """Per-row loss ``(1/D)||f - f_hat||^2 + beta/2 * sum(mu^2 + s^2 - 1 - log s^2)``."""
        mu, logvar = self.encode(f)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return neg_elbo(f, self.decode(z), mu, logvar, beta)


def neg_elbo(
    f: torch.Tensor,
    f_hat: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    rec = (f - f_hat).pow(2).mean(-1)
    kl = (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    return rec + 0.5 * beta * kl


@contextmanager
def single_thread() -> Iterator[None]:
    """Tiny matrices: one thread avoids intra-op threading overhead (6x faster on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_vae(
    features: torch.Tensor,
    *,
    steps: int,
    batch: int,
    lr: float,
    beta: float,
    hidden: int,
    latent: int,
    seed: int,
) -> VAE:
    """Fit a VAE to (N, D) features for a fixed number of Adam steps (batches drawn with
    replacement)."""
    return train_vaes(
        [features],
        steps=steps,
        batch=batch,
        lr=lr,
        beta=beta,
        hidden=hidden,
        latent=latent,
        seeds=[seed],
    )[0]


def train_vaes(
    sets: Sequence[torch.Tensor],
    *,
    steps: int,
    batch: int,
    lr: float,
    beta: float,
    hidden: int,
    latent: int,
    seeds: Sequence[int],
) -> list[VAE]:
    """Fit one VAE per feature set, all at once: the K VAEs are stacked and trained as one
    batched computation (Adam is element-wise, so this equals K separate trainings)."""
    with single_thread():
        inits = []
        for seed in seeds:
            torch.manual_seed(seed)
            inits.append(VAE(sets[0].shape[1], hidden, latent))
        params = [
            (
                torch.stack([getattr(v, a).weight.T for v in inits])
                .detach()
                .clone()
                .requires_grad_(True),
                torch.stack([getattr(v, a).bias[None] for v in inits])
                .detach()
                .clone()
                .requires_grad_(True),
            )
            for a in VAE_LAYERS
        ]
        opt = torch.optim.Adam([t for wb in params for t in wb], lr=lr)
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        for _ in range(steps):
            x = torch.stack(
                [
                    f[torch.randint(0, f.shape[0], (batch,), generator=g)]
                    for f, g in zip(sets, gens, strict=True)
                ]
            )
            (w1, b1), (w2, b2), (w3, b3), (w4, b4) = params
            mu, logvar = torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, x, w1)), w2).chunk(
                2, dim=-1
            )
            logvar = logvar.clamp(-20.0, 10.0)
            eps = torch.stack([torch.randn(batch, latent, generator=g) for g in gens])
            z = mu + eps * torch.exp(0.5 * logvar)
            f_hat = torch.baddbmm(b4, torch.relu(torch.baddbmm(b3, z, w3)), w4)
            loss = neg_elbo(x, f_hat, mu, logvar, beta).mean(dim=1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out = []
        for k, vae in enumerate(inits):
            with torch.no_grad():
                for a, (w, b) in zip(VAE_LAYERS, params, strict=True):
                    getattr(vae, a).weight.copy_(w[k].T)
                    getattr(vae, a).bias.copy_(b[k, 0])
            out.append(vae.eval().requires_grad_(False))
        return out


def fold_indices(n: int, folds: int) -> list[np.ndarray]:
    """Contiguous-stride folds: image i goes to fold i % folds (deterministic)."""
    return [np.arange(k, n, folds) for k in range(folds)]


def fit_router(
    features: torch.Tensor,
    *,
    folds: int,
    percentile: float,
    seed: int,
    beta: float,
    **train: int | float,
) -> tuple[VAE, float, np.ndarray]:
    """The task's VAE (trained on all features) and its K-fold threshold.

    The threshold is the ``percentile`` of every image's score under the fold VAE that did not
    see it. All K + 1 VAEs train together (``train_vaes``). Returns (vae, threshold, scores).
    """
    n = features.shape[0]
    held = fold_indices(n, folds)
    sets = [features[np.setdiff1d(np.arange(n), h)] for h in held] + [features]
    vaes = train_vaes(sets, seeds=[seed + k + 1 for k in range(folds)] + [seed], beta=beta, **train)
    scores = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for h, vae in zip(held, vaes, strict=False):
            scores[h] = vae.neg_elbo(features[h], beta, sample=False).double().numpy()
    return vaes[-1], float(np.percentile(scores, percentile)), scores


def _stack_padded(vaes: Sequence[VAE]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stack VAEs as (T, in, out) weights and (T, 1, out) biases, zero-padding each to the
    largest hidden and latent size. Exact: a padded hidden unit has zero weights in and out
    (relu(0) = 0); a padded latent dimension has mu = logvar = 0, whose KL term is 0."""
    hid = max(v.enc1.out_features for v in vaes)
    lat = max(v.latent for v in vaes)
    dim = vaes[0].enc1.in_features
    t = len(vaes)
    w1, b1 = torch.zeros(t, dim, hid), torch.zeros(t, 1, hid)
    w2, b2 = torch.zeros(t, hid, 2 * lat), torch.zeros(t, 1, 2 * lat)
    w3, b3 = torch.zeros(t, lat, hid), torch.zeros(t, 1, hid)
    w4, b4 = torch.zeros(t, hid, dim), torch.zeros(t, 1, dim)
    with torch.no_grad():
        for k, v in enumerate(vaes):
            h, z = v.enc1.out_features, v.latent
            w1[k, :, :h], b1[k, 0, :h] = v.enc1.weight.T, v.enc1.bias
            w2[k, :h, :z], b2[k, 0, :z] = v.enc2.weight[:z].T, v.enc2.bias[:z]
            w2[k, :h, lat : lat + z], b2[k, 0, lat : lat + z] = v.enc2.weight[z:].T, v.enc2.bias[z:]
            w3[k, :z, :h], b3[k, 0, :h] = v.dec1.weight.T, v.dec1.bias
            w4[k, :h, :], b4[k, 0, :] = v.dec2.weight.T, v.dec2.bias
    return [(w1, b1), (w2, b2), (w3, b3), (w4, b4)]


class VAEBank:
    """All VAEs of the active backbone's tasks, stacked: one batched einsum scores every task."""

    def __init__(
        self,
        names: Sequence[str],
        vaes: Sequence[VAE],
        thresholds: Sequence[float],
        beta: Sequence[float],
    ):
        self.names = list(names)
        self.thresholds = torch.tensor(list(thresholds), dtype=torch.float32)
        self.beta = torch.tensor(list(beta), dtype=torch.float32)
        if vaes:
            self.layers = _stack_padded(vaes)

    def __len__(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def scores(self, f: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, T) negative ELBOs, every task at once."""
        if not self.names:
            return torch.empty(f.shape[0], 0)
        (w1, b1), (w2, b2), (w3, b3), (w4, b4) = self.layers
        x = f.float()[None].expand(len(self.names), -1, -1)
        h = torch.relu(torch.baddbmm(b1, x, w1))
        mu, logvar = torch.baddbmm(b2, h, w2).chunk(2, dim=-1)
        logvar = logvar.clamp(-20.0, 10.0)
        f_hat = torch.baddbmm(b4, torch.relu(torch.baddbmm(b3, mu, w3)), w4)
        return neg_elbo(x, f_hat, mu, logvar, self.beta[:, None]).T

    def route(self, f: torch.Tensor) -> RouteDecision:
        """One (D,) feature -> the routing decision (argmin, then threshold)."""
        if not self.names:
            return decide([], [], [])
        return decide(self.names, self.scores(f[None])[0].tolist(), self.thresholds.tolist())
