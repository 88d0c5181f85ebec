"""A task's adapter, of either kind (``config.ADAPTER_KINDS``), as one object the engine uses.

- ``"alignment"``: the Alignment Layer (:mod:`casam.alignment`) maps the frozen embedding to an
  aligned one, decoded by the frozen mask decoder.
- ``"decoder"``: the decoder adapters (:mod:`casam.decoder_adapter`) leave the embedding as it
  is and decode it through the task's adapted view of the mask decoder.

Both are trained by the same loop (``casam.training.train_alignment``: samples, box jitter,
schedule, loss), on the same samples and prompts; the router stage does not depend on the kind
(it scores the frozen embedding). Here the kind is dispatched once: building a new adapter,
rebuilding a stored one, training it, and decoding with it (:meth:`TaskAdapter.decode`).
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass

import torch
from torch import nn

from casam.config import LearnSettings
from casam.progress import Progress
from casam.sam import Backbone


@dataclass(frozen=True)
class TaskAdapter:
    """A task's trained (or new) adapter on one backbone."""

    kind: str
    module: nn.Module
    """The AlignmentLayer, or the DecoderAdapters (the identity on the embedding)."""
    decoder: nn.Module | None = None
    """The task's adapted mask decoder (kind ``"decoder"``); None: the backbone's frozen one."""

    @property
    def blocks(self) -> int:
        """Alignment Layer blocks (0 for decoder adapters), as ``task.json`` records them."""
        return int(getattr(self.module, "n_blocks", 0))

    def embedding(self, z: torch.Tensor) -> torch.Tensor:
        """The embedding the decoder sees: aligned (kind alignment) or ``z`` itself."""
        return self.module(z) if self.kind == "alignment" else z

    def decode(self, backbone: Backbone, z: torch.Tensor, *prompts, **kwargs):
        """``backbone.decode`` of the task's embedding through the task's decoder."""
        return backbone.decode(self.embedding(z), *prompts, decoder=self.decoder, **kwargs)

    def state(self) -> dict[str, torch.Tensor]:
        """What ``alignment.safetensors`` stores (``casam.task_tensors`` checks it)."""
        return self.module.state_dict()


def _decoder_kind(backbone: Backbone, adapters) -> TaskAdapter:
    return TaskAdapter("decoder", adapters, adapters.adapted(backbone.mask_decoder))


def new_adapter(backbone: Backbone, s: LearnSettings, z: torch.Tensor | None = None) -> TaskAdapter:
    """An untrained adapter of ``s.adapter`` (the identity on SAM's output). ``z``: training
    embeddings to fix an Alignment Layer's scale from."""
    if s.adapter == "decoder":
        from casam.decoder_adapter import DecoderAdapters

        dec = backbone.mask_decoder
        adapters = DecoderAdapters.for_decoder(dec, s.adapter_bottleneck).to(backbone.device)
        return _decoder_kind(backbone, adapters)
    from casam.alignment import AlignmentLayer

    layer = AlignmentLayer(s.blocks)
    if z is not None:
        layer.set_scale(z)
    return TaskAdapter("alignment", layer.to(backbone.device))


def adapter_from_state(kind: str, state: dict, backbone: Backbone) -> TaskAdapter:
    """A stored adapter (checked by ``casam.task_tensors``), eval mode and frozen, on the
    backbone's device."""
    if kind == "decoder":
        from casam.decoder_adapter import from_state

        adapters = from_state(state, backbone.mask_decoder).to(backbone.device)
        return _decoder_kind(backbone, adapters)
    from casam.task_tensors import layer_from_state

    return TaskAdapter("alignment", layer_from_state(state).to(backbone.device))


def adapter_of(task, backbone: Backbone) -> TaskAdapter:
    """The adapter of a ``casam.library.LoadedTask`` (its kind from its ``task.json``)."""
    return adapter_from_state(task.info.adapter, task.alignment, backbone)


def with_strength(adapter: TaskAdapter, strength: float, backbone: Backbone) -> TaskAdapter:
    """A copy of ``adapter`` whose residual branches are scaled by ``strength``: 1 as trained,
    0 the identity (plain SAM), in between a shrink toward it. Same kind and state keys, so it
    is stored and loaded like any adapter: an Alignment Layer's blocks multiply their ``scale``
    buffer, decoder adapters their zero-initialised ``up`` projection."""
    module = copy.deepcopy(adapter.module)
    with torch.no_grad():
        if adapter.kind == "decoder":
            for a in module.adapters.values():
                a.up.weight.mul_(strength)
                a.up.bias.mul_(strength)
            return _decoder_kind(backbone, module)
        for b in module.blocks:
            b.scale.mul_(strength)
    return TaskAdapter(adapter.kind, module)


def train_adapter(
    backbone: Backbone,
    z: torch.Tensor,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    s: LearnSettings,
    previous: TaskAdapter | None = None,
    where: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
) -> Generator[Progress, None, TaskAdapter]:
    """Train a new adapter of ``s.adapter`` (or continue ``previous``, of its own kind) with the
    learning schedule ``s``; yields ``Progress("align")`` per step like ``train_alignment``."""
    from casam.training import train_alignment

    a = previous if previous is not None else new_adapter(backbone, s, z)
    module = yield from train_alignment(
        backbone, z, boxes, targets, s, layer=a.module, where=where, gen=gen, decoder=a.decoder
    )
    return TaskAdapter(a.kind, module, a.decoder)
