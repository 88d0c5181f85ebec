"""The frozen SAM-family model that runs: preprocessing, image encoder, prompt encoder, decoder.

:func:`get_backbone` builds a registry entry (:mod:`casam.backbones`) once per process and
device; its checkpoint is read by :mod:`casam.checkpoints`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from casam.backbones import (
    LOWRES,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    BackboneSpec,
    resolve_device,
    spec_of,
)
from casam.checkpoints import checkpoint_of, guess_backbone, identity, load_state
from casam.errors import CheckpointError
from casam.preprocess import Geometry, to_unit_rgb


class Backbone:
    """A frozen SAM-family model with its preprocessing.

    ``encode`` maps an image to its (256, 64, 64) embedding; ``decode`` maps embeddings and
    boxes (in the S x S input frame) to 256 x 256 low-resolution mask logits.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        runtime: str | None = None,
    ):
        self.spec = spec
        self.name = spec.name
        self.input_size = spec.input_size
        self.device = resolve_device(device)
        path, self.digest = checkpoint_of(spec, checkpoint)
        self.checkpoint = path
        self.identity = identity(spec.name, self.digest)
        state = load_state(path)
        if spec.heads is not None:
            encoder, (prompt_encoder, mask_decoder) = None, spec.heads()
            self._encoder_state = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
        else:
            encoder, prompt_encoder, mask_decoder = spec.build()
        self._load_parts(state, encoder, prompt_encoder, mask_decoder)
        if encoder is not None:
            self.image_encoder = encoder.to(self.device).eval().requires_grad_(False)
        self.runtime = _make_runtime(self, runtime)
        self.prompt_encoder = prompt_encoder.to(self.device).eval().requires_grad_(False)
        self.mask_decoder = mask_decoder.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            self._image_pe = self.prompt_encoder.get_dense_pe()
        self.box_decoder = _make_box_decoder(self)
        self._lock = threading.Lock()
        mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
        self._mean, self._std = mean, std

    def _load_parts(
        self,
        state: dict,
        encoder: nn.Module | None,
        prompt_encoder: nn.Module | None,
        mask_decoder: nn.Module | None,
    ) -> None:
        for prefix, module in (
            ("image_encoder.", encoder),
            ("prompt_encoder.", prompt_encoder),
            ("mask_decoder.", mask_decoder),
        ):
            if module is None:
                continue
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as e:
                hint = guess_backbone(state)
                extra = (
                    f"; it looks like a {hint} checkpoint: choose backbone {hint}"
                    if hint and hint != self.name
                    else ""
                )
                first = str(e).splitlines()[0][:120]
                raise CheckpointError(
                    f"checkpoint {self.checkpoint if hasattr(self, 'checkpoint') else ''} does "
                    "not fit backbone "
                    f"{self.name} ({prefix.rstrip('.')}: {first}){extra}",
                    subject="backbone" if extra else "checkpoint",
                ) from None

    runtime = None
    """The encoder runtime (``casam.runtime.GuardedRuntime``); None: the module, in torch."""
    box_decoder = None
    """The compiled box decoder (``casam.runtime.BoxDecoderRuntime``); None: torch decodes."""
    _encoder_module: nn.Module | None = None

    @property
    def image_encoder(self) -> nn.Module:
        """The frozen torch image encoder, built from the checkpoint on first use."""
        if self._encoder_module is None:
            with _ENCODER_LOCK:
                if self._encoder_module is None:
                    enc = self.spec.build()[0]
                    self._load_parts(self._encoder_state, enc, None, None)
                    self._encoder_module = enc.to(self.device).eval().requires_grad_(False)
        return self._encoder_module

    @image_encoder.setter
    def image_encoder(self, module: nn.Module) -> None:
        self._encoder_module = module

    @property
    def embed_identity(self) -> str:
        """What produced an embedding: the backbone, plus the runtime unless it is fp32 torch."""
        rt = self.runtime.identity if self.runtime is not None else ""
        return f"{self.identity}|{rt}" if rt else self.identity

    # ---- preprocessing -------------------------------------------------------------------
    def geometry(self, height: int, width: int) -> Geometry:
        return Geometry(height, width, self.input_size)

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Image -> (1, 3, S, S) model input on the device, and its geometry."""
        rgb = to_unit_rgb(image)
        h, w = rgb.shape[:2]
        geo = self.geometry(h, w)
        rh, rw = geo.resized
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        if (rh, rw) != (h, w):
            x = F.interpolate(
                x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=rh < h
            )
        x = x[0]
        if self.spec.sam_normalize:
            x = (x * 255.0 - self._mean) / self._std
        x = F.pad(x, (0, self.input_size - rw, 0, self.input_size - rh))
        return x[None].to(self.device), geo

    # ---- model calls ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """Image -> embedding (256, 64, 64) float32 on the CPU, and the image's geometry."""
        x, geo = self.prepare(image)
        return self.encode_inputs(x)[0], geo

    @torch.no_grad()
    def encode_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared inputs (B, 3, S, S) -> embeddings (B, 256, 64, 64) float32 on the CPU,
        through the runtime (batched as it prefers)."""
        with self._lock:
            if self.runtime is None:
                return self.image_encoder(x.to(self.device)).float().cpu()
            return torch.from_numpy(self.runtime.embed(x.cpu().numpy()))

    def prompt(self, boxes_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (B, 4) in the input frame -> sparse (B, 2, 256) and dense (B, 256, 64, 64)."""
        return self.prompt_encoder(points=None, boxes=boxes_input.to(self.device), masks=None)

    def decode(
        self,
        z: torch.Tensor,
        boxes_input: torch.Tensor | None,
        points_input: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
        decoder: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and prompts -> (B, 1, 256, 256) mask logits and (B, 1) predicted IoU.

        ``z`` is either (1, 256, 64, 64) (one image, B prompts) or (B, 256, 64, 64) (one prompt
        per image, paired). ``boxes_input`` (B, 4) and ``points_input`` (B, P, 2) are in the
        input frame, ``labels`` (B, P) 1/0, ``mask_input`` (B, 1, 256, 256) previous logits. With
        ``multimask`` SAM's three candidates are made and the one with the highest predicted IoU
        is kept (SAM's advice for a lone click). Gradients flow into ``z`` (for training).
        ``decoder``: a task's adapted mask decoder (``casam.decoder_adapter``) instead of the
        frozen one; it always runs in torch (the compiled box decoder is the frozen one's).
        """
        dev = self.device
        pts = None
        if points_input is not None and points_input.shape[1] > 0:
            pts = (points_input.to(dev), labels.to(dev))
        plain = pts is None and mask_input is None and not multimask and boxes_input is not None
        if plain and z.shape[0] == 1 and self.box_decoder is not None and decoder is None:
            if not (torch.is_grad_enabled() and z.requires_grad) and self.box_decoder.prepare():
                out = self.box_decoder.decode(z, boxes_input)
                if out is not None:
                    return out
        sparse, dense = self.prompt_encoder(
            points=pts,
            boxes=None if boxes_input is None else boxes_input.to(dev),
            masks=None if mask_input is None else mask_input.to(dev),
        )
        dec = self.mask_decoder if decoder is None else decoder
        if z.shape[0] > 1:
            return _paired_decode(dec, z, self._image_pe, sparse, dense)
        masks, iou = dec(
            image_embeddings=z,
            image_pe=self._image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        if multimask:
            best = iou.argmax(dim=1)
            rows = torch.arange(masks.shape[0], device=masks.device)
            return masks[rows, best][:, None], iou[rows, best][:, None]
        return masks, iou

    def upscale_masks(self, logits: torch.Tensor, geo: Geometry) -> torch.Tensor:
        """(B, 1, 256, 256) logits -> (B, H, W) logits in original pixels (SAM's postprocess)."""
        s = self.input_size
        rh, rw = geo.resized
        x = F.interpolate(logits.float(), size=(s, s), mode="bilinear", align_corners=False)
        x = x[..., :rh, :rw]
        x = F.interpolate(x, size=(geo.height, geo.width), mode="bilinear", align_corners=False)
        return x[:, 0]

    def lowres_target(self, mask: np.ndarray, geo: Geometry) -> torch.Tensor:
        """A (H, W) mask -> (256, 256) float target in the decoder's low-res frame."""
        rh, rw = geo.resized
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        m = F.interpolate(m, size=(rh, rw), mode="bilinear", align_corners=False)
        m = F.pad(m, (0, self.input_size - rw, 0, self.input_size - rh))
        m = F.interpolate(
            m,
            size=(LOWRES, LOWRES),
            mode="bilinear",
            align_corners=False,
            antialias=self.input_size > LOWRES,
        )
        return (m[0, 0] > 0.5).float()


def _paired_decode(
    dec: nn.Module, z: torch.Tensor, pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """segment_anything's mask prediction for B (image, box) pairs (no repeat per prompt)."""
    b = z.shape[0]
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    src = z + dense
    pos = pe.expand(b, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = dec.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    mask_token = hs[:, 1, :]
    up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = dec.output_hypernetworks_mlps[0](mask_token)
    _, c2, h2, w2 = up.shape
    masks = (hyper[:, None, :] @ up.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)
    iou = dec.iou_prediction_head(iou_out)[:, :1]
    return masks, iou


def _recipe(bb: Backbone) -> tuple[str, str]:
    """What a child process needs to build the same backbone (``casam.runtime._child``)."""
    return bb.name, str(bb.checkpoint) if bb.checkpoint else ""


def _make_runtime(bb: Backbone, runtime: str | None):
    from casam.runtime import EncoderSource, GuardedRuntime

    source = EncoderSource(
        bb.identity,
        bb.digest,
        bb.input_size,
        lambda: bb.image_encoder,
        bb.device.type,
        recipe=_recipe(bb),
    )
    return GuardedRuntime(source, runtime)


def _make_box_decoder(bb: Backbone):
    """The compiled box decoder where the encoder runs in OpenVINO (same engine, so no new
    dependency and no new numerics family), else None: torch decodes."""
    rt = bb.runtime
    if bb.device.type != "cpu" or rt is None or not rt.name.startswith("openvino"):
        return None
    from casam.runtime import BoxDecoderRuntime

    parts = (bb.prompt_encoder, bb.mask_decoder, bb._image_pe)
    return BoxDecoderRuntime(bb.identity, bb.digest, lambda: parts, _recipe(bb))


_BUILT: dict[tuple[str, str, str, str], Backbone] = {}
_BUILT_LOCK = threading.Lock()
_ENCODER_LOCK = threading.Lock()


def get_backbone(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    runtime: str | None = None,
) -> Backbone:
    """Build (once per process) the named backbone; see ``BACKBONES`` for the names.
    ``runtime``: an encoder runtime of ``casam.runtime.RUNTIMES`` (None: ``$CASAM_RUNTIME``,
    else chosen for this machine)."""
    from casam.runtime import requested_runtime

    spec = spec_of(name)
    dev = resolve_device(device)
    rt = requested_runtime(runtime)
    key = (name, str(Path(checkpoint).expanduser().resolve()) if checkpoint else "", str(dev), rt)
    with _BUILT_LOCK:
        if key not in _BUILT:
            _BUILT[key] = Backbone(spec, checkpoint, dev, rt)
        return _BUILT[key]
