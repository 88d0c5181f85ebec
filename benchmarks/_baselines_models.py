"""The models of the baselines benchmark (``baselines.py``), on the backbone's public modules.

Every trainable piece here is an ``nn.Module`` whose ``forward`` is the identity on the image
embedding, so ``casam.training.train_alignment`` (the very loop, schedule and loss of
``learn_task``) trains it unchanged: it optimises the module's parameters while the module is
*attached* to the backbone.

- :class:`DecoderAdapters` (SAM-DA style): a bottleneck adapter (down-projection, GELU,
  zero-initialised up-projection, residual) after each attention and MLP sub-layer of the mask
  decoder's two-way transformer, added by forward hooks while attached. Everything else stays
  frozen; at init the decoder's output is unchanged.
- :class:`DecoderCopy` (decoder tuning): a trainable copy of the whole mask decoder, swapped into
  the backbone while attached.
- EWC and LwF for ONE Alignment Layer trained task after task: their extra loss terms enter as
  gradient hooks (:func:`ewc_hooks` on the parameters, :func:`lwf_hooks` on the layer's output),
  whose gradients equal those of :func:`ewc_penalty` and :func:`lwf_loss` (tested).

Not part of the product: ``casam`` is never edited for these.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: The sub-layers of each TwoWayAttentionBlock followed by an adapter (segment_anything's names).
BLOCK_SITES = ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token")
FINAL_SITE = "final_attn_token_to_image"


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Adapter(nn.Module):
    """``x + up(gelu(down(x)))`` on (..., dim) tokens; ``up`` starts at zero (identity)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def adapter_sites(transformer: nn.Module) -> list[str]:
    """Names (inside the decoder's transformer) of the sub-layers that get an adapter."""
    sites = [f"layers.{i}.{s}" for i in range(len(transformer.layers)) for s in BLOCK_SITES]
    if hasattr(transformer, FINAL_SITE):
        sites.append(FINAL_SITE)
    return sites


class DecoderAdapters(nn.Module):
    """Bottleneck adapters for a SAM mask decoder; the identity on the image embedding.

    The decoder is not a sub-module (it stays frozen and shared): :meth:`attached` hooks the
    adapters into a backbone's ``mask_decoder`` for the duration of a ``with`` block."""

    def __init__(self, decoder: nn.Module, bottleneck: int = 32):
        super().__init__()
        self.sites = adapter_sites(decoder.transformer)
        dim = decoder.transformer_dim
        self.adapters = nn.ModuleDict(
            {s.replace(".", "_"): Adapter(dim, bottleneck) for s in self.sites}
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @contextmanager
    def attached(self, backbone) -> Iterator[None]:
        transformer = backbone.mask_decoder.transformer
        handles = []
        try:
            for s in self.sites:
                adapter = self.adapters[s.replace(".", "_")]
                handles.append(
                    transformer.get_submodule(s).register_forward_hook(
                        lambda _m, _inp, out, a=adapter: a(out)
                    )
                )
            yield
        finally:
            for h in handles:
                h.remove()


class DecoderCopy(nn.Module):
    """A trainable copy of a backbone's whole mask decoder; the identity on the embedding.

    :meth:`attached` puts the copy in the backbone's place for a ``with`` block."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = copy.deepcopy(decoder)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @contextmanager
    def attached(self, backbone) -> Iterator[None]:
        frozen = backbone.mask_decoder
        backbone.mask_decoder = self.decoder
        try:
            yield
        finally:
            backbone.mask_decoder = frozen


@contextmanager
def nothing_attached(backbone) -> Iterator[None]:
    """The ``attached`` of an Alignment Layer (it acts on the embedding itself)."""
    yield


def attached(module: nn.Module | None, backbone):
    """``module.attached(backbone)`` if it has one, else a no-op context."""
    fn = getattr(module, "attached", None)
    return fn(backbone) if fn is not None else nothing_attached(backbone)


# ---- EWC: a diagonal Fisher of the previous tasks, a quadratic pull towards the anchor --------


def diag_fisher(backbone, layer: nn.Module, z, boxes, targets) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of ``layer``'s parameters: the mean over the samples of the
    squared gradient of the task loss (``casam.training.dice_bce``, ground-truth box), each
    sample alone, in float32. Normalised to a mean of 1 over all parameters, so the EWC weight
    does not depend on the loss's scale."""
    from casam.training import dice_bce

    params = dict(layer.named_parameters())
    was = {n: p.requires_grad for n, p in params.items()}
    layer.requires_grad_(True)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(z.shape[0]):
        logits, _ = backbone.decode(layer(z[i : i + 1]), boxes[i : i + 1])
        loss = dice_bce(logits[:, 0], targets[i : i + 1])
        grads = torch.autograd.grad(loss, list(params.values()))
        for n, g in zip(params, grads, strict=True):
            fisher[n] += g.detach().pow(2) / z.shape[0]
    for n, p in params.items():
        p.requires_grad_(was[n])
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
    return {n: f / mean if mean > 0 else f for n, f in fisher.items()}


def anchor_of(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in layer.named_parameters()}


def ewc_penalty(layer: nn.Module, fisher: dict, anchor: dict) -> torch.Tensor:
    """``1/2 sum_i F_i (theta_i - theta*_i)^2`` (to be multiplied by the EWC weight)."""
    terms = [(fisher[n] * (p - anchor[n]).pow(2)).sum() for n, p in layer.named_parameters()]
    return 0.5 * torch.stack(terms).sum()


@contextmanager
def ewc_hooks(layer: nn.Module, fisher: dict, anchor: dict, weight: float) -> Iterator[None]:
    """While active, each parameter's gradient gets ``weight x d ewc_penalty / d theta``
    added (the same as training on loss + weight x penalty)."""
    handles = [
        p.register_hook(lambda g, p=p, f=fisher[n], a=anchor[n]: g + weight * f * (p.detach() - a))
        for n, p in layer.named_parameters()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def merge_fisher(old: dict | None, new: dict) -> dict:
    """Online EWC: the Fishers of the tasks so far add up (one anchor: the latest layer)."""
    return dict(new) if old is None else {n: old[n] + new[n] for n in new}


# ---- LwF: distil the previous layer's output on the current task's embeddings ---------------


def lwf_loss(out: torch.Tensor, teacher_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean squared difference of two layers' outputs, in units of the embedding's RMS."""
    return (out.float() - teacher_out.float()).pow(2).mean() / (scale * scale)


@contextmanager
def lwf_hooks(layer: nn.Module, teacher: nn.Module, weight: float, scale: float):
    """While active, every training forward of ``layer`` adds the gradient of
    ``weight x lwf_loss(layer(z), teacher(z))`` to its output's gradient."""

    def on_forward(_mod, inp, out):
        if not out.requires_grad:
            return None
        with torch.no_grad():
            t = teacher(inp[0]).float()
        k = 2.0 * weight / (out.numel() * scale * scale)
        out.register_hook(lambda g: g + (k * (out.detach().float() - t)).to(g.dtype))
        return None

    handle = layer.register_forward_hook(on_forward)
    try:
        yield
    finally:
        handle.remove()
