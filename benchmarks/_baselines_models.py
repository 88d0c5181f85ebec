"""The models of the baselines benchmark (``baselines.py``), on the backbone's public modules.

Every trainable piece here is an ``nn.Module`` whose ``forward`` is the identity on the image
embedding or the Alignment Layer itself, so ``casam.training.train_alignment`` (the very loop,
schedule and loss of ``learn_task``) trains it unchanged, decoding through the module's own
mask decoder (:func:`decoder_of`, passed as ``decoder=``; the shared backbone is never changed,
and ``Backbone.decode`` bypasses the compiled box decoder for it).

- decoder adapters (SAM-DA style): the product's :class:`casam.decoder_adapter.DecoderAdapters`
  (the adapter kind ``"decoder"`` of ``casam learn --adapter decoder``), imported, not copied.
- :class:`DecoderCopy` (decoder tuning): a trainable copy of the whole mask decoder.
- EWC and LwF for ONE Alignment Layer trained task after task: their extra loss terms enter as
  gradient hooks (:func:`ewc_hooks` on the parameters, :func:`lwf_hooks` on the layer's output),
  whose gradients equal those of :func:`ewc_penalty` and :func:`lwf_loss` (tested).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from casam.decoder_adapter import DecoderAdapters, trainable_parameters

__all__ = ["DecoderAdapters", "DecoderCopy", "decoder_of", "trainable_parameters"]


class DecoderCopy(nn.Module):
    """A trainable copy of a backbone's whole mask decoder; the identity on the embedding."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = copy.deepcopy(decoder)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoder_of(module: nn.Module | None, backbone) -> nn.Module | None:
    """The mask decoder ``module`` decodes with: a DecoderCopy's copy, decoder adapters'
    adapted view of the backbone's decoder (built once per module), else None (the frozen one)."""
    if isinstance(module, DecoderCopy):
        return module.decoder
    if isinstance(module, DecoderAdapters):
        if module not in _VIEWS:
            _VIEWS[module] = module.adapted(backbone.mask_decoder)
        return _VIEWS[module]
    return None


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
