"""Decoder adapters (SAM-DA style): a task's small bottleneck adapters inside the frozen mask
decoder's two-way transformer, the adapter kind ``"decoder"`` of a task.

One :class:`Adapter` (``x + up(gelu(down(x)))``, ``up`` zero-initialised, so an untrained one is
the identity) follows each attention and MLP sub-layer of every ``TwoWayAttentionBlock`` and the
final token-to-image attention: 9 adapters on SAM's depth-2 transformer, 150,048 parameters at
bottleneck 32, everything else frozen. The image embedding itself is not changed (the router
still scores the frozen embedding).

Thread safety: the backbone's ``mask_decoder`` is shared by threads and never changed.
:meth:`DecoderAdapters.adapted` builds a separate module tree for one task (sharing the frozen
decoder's tensors, so it costs no memory) with the adapters hooked into it for good; a caller
keeps it (``Predictor`` caches one per task) and passes it to ``Backbone.decode(decoder=...)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

#: The sub-layers of each TwoWayAttentionBlock followed by an adapter (segment_anything's names).
BLOCK_SITES = ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token")
FINAL_SITE = "final_attn_token_to_image"
#: Two-way transformer blocks of every SAM-family mask decoder (SAM, MedSAM, LiteMedSAM).
DECODER_DEPTH = 2


def adapter_sites(depth: int = DECODER_DEPTH) -> list[str]:
    """Names (inside the decoder's transformer) of the sub-layers that get an adapter."""
    return [f"layers.{i}.{s}" for i in range(depth) for s in BLOCK_SITES] + [FINAL_SITE]


def site_key(site: str) -> str:
    """A site's key in :attr:`DecoderAdapters.adapters` (module names cannot hold dots)."""
    return site.replace(".", "_")


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


class DecoderAdapters(nn.Module):
    """The adapters of one task. ``forward`` is the identity on the image embedding, so the
    training loop of ``casam.training`` runs it like an Alignment Layer; the adapters act
    through :meth:`adapted`. Its state dict holds only ``adapters.*`` (the decoder is not a
    sub-module: it stays frozen and shared)."""

    def __init__(self, dim: int = 256, bottleneck: int = 32, depth: int = DECODER_DEPTH):
        super().__init__()
        self.sites = adapter_sites(depth)
        self.adapters = nn.ModuleDict({site_key(s): Adapter(dim, bottleneck) for s in self.sites})

    @classmethod
    def for_decoder(cls, decoder: nn.Module, bottleneck: int = 32) -> DecoderAdapters:
        t = decoder.transformer
        return cls(t.embedding_dim, bottleneck, len(t.layers))

    @property
    def bottleneck(self) -> int:
        return next(iter(self.adapters.values())).down.out_features

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def adapted(self, decoder: nn.Module) -> nn.Module:
        """A mask decoder that runs ``decoder``'s frozen weights with these adapters: new module
        objects over the same tensors (never copied), the adapters hooked into the new ones.
        ``decoder`` itself is left untouched, so other threads decoding with it see no change."""
        shared = {id(t): t for t in (*decoder.parameters(), *decoder.buffers())}
        view = copy.deepcopy(decoder, memo=shared)
        for s in self.sites:
            adapter = self.adapters[site_key(s)]
            view.transformer.get_submodule(s).register_forward_hook(
                lambda _m, _inp, out, a=adapter: a(out)
            )
        return view


def from_state(state: dict[str, torch.Tensor], decoder: nn.Module) -> DecoderAdapters:
    """Adapters (eval mode, frozen) for ``decoder`` from a state that ``casam.task_tensors``
    checked."""
    bottleneck = state[f"adapters.{site_key(adapter_sites()[0])}.down.weight"].shape[0]
    adapters = DecoderAdapters.for_decoder(decoder, int(bottleneck))
    adapters.load_state_dict(state)
    return adapters.eval().requires_grad_(False)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
