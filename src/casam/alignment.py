"""The Alignment Layer: a stack of CAResBlocks between the frozen encoder and decoder.

Each CAResBlock (method.md): conv3x3 -> ReLU -> conv3x3 -> ECA channel attention
(global average pool -> 1-D conv across channels -> sigmoid -> rescale), added to the block's
input, with LayerNorm2d. The LayerNorm normalises the residual branch's input (the previous
block's output), and the last conv of each branch starts at zero, so an untrained layer is
exactly the identity (no ReLU after the last conv: ReLU's zero gradient at
0 would keep a zero-initialised conv from ever learning): a new task starts from SAM's own
behaviour, and the residual stream of the embedding (which SAM's neck already normalised) is
never renormalised.

The branch works in normalised units: LayerNorm on its input, and its output multiplied by
``scale``, the RMS of the task's training embeddings (a buffer fixed when training starts;
about 0.1 for LiteMedSAM). A learning rate thus means the same for every backbone, and one
Adam step cannot push the embedding far off its scale (without it, lr 1e-3 could make a
layer collapse to empty masks).
"""

from __future__ import annotations

import torch
from torch import nn

from casam.backbones import EMBED_DIM


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an (N, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ECA(nn.Module):
    """Efficient channel attention: a 1-D conv over the pooled channel descriptor."""

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3))[:, None, :]
        w = torch.sigmoid(self.conv(w))[:, 0, :, None, None]
        return x * w


class CAResBlock(nn.Module):
    def __init__(self, channels: int = EMBED_DIM, eca_kernel: int = 3):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.eca = ECA(eca_kernel)
        self.register_buffer("scale", torch.tensor(1.0))
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(self.norm(x)))
        h = self.conv2(h)
        return x + self.scale * self.eca(h)


class AlignmentLayer(nn.Module):
    """``blocks`` CAResBlocks on a (N, 256, 64, 64) embedding; identity when untrained."""

    def __init__(self, blocks: int = 1, channels: int = EMBED_DIM):
        super().__init__()
        if blocks < 1:
            raise ValueError("an Alignment Layer needs at least one block")
        self.blocks = nn.Sequential(*[CAResBlock(channels) for _ in range(blocks)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)

    def set_scale(self, embeddings: torch.Tensor) -> None:
        """Match the branches' output scale to the embeddings' RMS (a fixed buffer)."""
        rms = float(embeddings.float().pow(2).mean().sqrt())
        for b in self.blocks:
            b.scale.fill_(rms if rms > 0 else 1.0)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @staticmethod
    def blocks_in_state(state: dict[str, torch.Tensor]) -> int:
        """Number of blocks a saved state dict was made with."""
        idx = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        return max(idx) + 1 if idx else 0
