"""Helpers shared by the engine tests (importable as ``casam_testing``: pytest's ``pythonpath``
setting in pyproject.toml puts this folder on ``sys.path``; the subprocess scripts of the kill
and concurrency tests get it through ``subprocess_env``). Everything here is small and fast:
task weights of the real shapes with random values, synthetic 64x64 images, and a tiny
backbone (random SAM prompt encoder and mask decoder, a one-conv "encoder") that learns a
task in seconds on a CPU without touching the bundled model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY_IDENTITY = "tiny:000000000000"


def one_line(exc: BaseException) -> str:
    """The message of a user-facing error, checked to be a single non-empty line."""
    from casam.errors import CasamError

    assert isinstance(exc, CasamError), f"{type(exc).__name__} is not a CasamError: {exc}"
    msg = str(exc)
    assert msg.strip(), "empty message"
    assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
    return msg


def alignment_state(blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    from casam.alignment import AlignmentLayer

    torch.manual_seed(seed)
    layer = AlignmentLayer(blocks)
    return {k: v.clone() for k, v in layer.state_dict().items()}


def router_state(
    seed: int = 0, n: int = 6, hidden: int = 128, latent: int = 64
) -> dict[str, torch.Tensor]:
    from casam.router import VAE

    torch.manual_seed(seed)
    vae = VAE(256, hidden, latent)
    state = {f"vae.{k}": v.clone() for k, v in vae.state_dict().items()}
    state["features"] = torch.randn(n, 256)
    return state


def make_info(
    name: str, backbone: str = TINY_IDENTITY, blocks: int = 1, threshold: float = 0.5, **kw
):
    from casam.library import new_task_info

    fields = dict(
        backbone=backbone,
        threshold=threshold,
        blocks=blocks,
        n_images=6,
        n_objects=6,
        iou_sam=0.5,
        iou_task=0.7,
        biou_sam=0.3,
        biou_task=0.5,
        n_holdout=0,
        settings={"beta": 16.5, "epochs": 1},
    )
    fields.update(kw)
    return new_task_info(name, **fields)


def save_task(
    lib, name: str, seed: int = 0, backbone: str = TINY_IDENTITY, overwrite: bool = False, **kw
):
    return lib.save(
        make_info(name, backbone, **kw),
        alignment_state(seed=seed),
        router_state(seed),
        overwrite=overwrite,
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), the lock file excepted."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def disk_images(
    n: int = 5, size: int = 64, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` int16 CT-like slices with a bright disk each, and the disks as label masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for i in range(n):
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        r = size // 8 + i % 4
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.normal(-200, 30, (size, size)).astype(np.int16)
        img[disk] += 600
        images.append(img)
        masks.append(disk.astype(np.uint8))
    return images, masks


class TinyBackbone:
    """Builds a ``casam.sam.Backbone`` whose encoder is a single conv (no weights file).

    The prompt encoder and mask decoder are segment_anything's, randomly initialised: enough
    for learning to run end to end (and to be killed) in seconds.
    """

    _built: dict[int, object] = {}

    def __new__(cls, seed: int = 0):
        if seed not in cls._built:
            cls._built[seed] = cls._build(seed)
        return cls._built[seed]

    @staticmethod
    def _build(seed: int):
        import threading

        from casam.backbones import BACKBONES, SAM_PIXEL_MEAN, SAM_PIXEL_STD, _sam_heads
        from casam.sam import Backbone

        b = Backbone.__new__(Backbone)
        b.spec = BACKBONES["litemedsam"]
        b.name = "tiny"
        b.input_size = 256
        b.device = torch.device("cpu")
        b.checkpoint = None
        b.digest = "0" * 64
        b.identity = TINY_IDENTITY
        torch.manual_seed(seed)
        prompt_encoder, mask_decoder = _sam_heads(input_size=256)
        encoder = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 256, 1))
        b.image_encoder = encoder.eval().requires_grad_(False)
        b.prompt_encoder = prompt_encoder.eval().requires_grad_(False)
        b.mask_decoder = mask_decoder.eval().requires_grad_(False)
        with torch.no_grad():
            b._image_pe = b.prompt_encoder.get_dense_pe()
        b._lock = threading.Lock()
        b._mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
        b._std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
        return b


def tiny_settings(**kw):
    """A schedule that learns 2-3 small images in seconds (one Alignment Layer step)."""
    from casam.config import LearnSettings

    # no augmented copies unless a test asks for them (tests/core/test_augment.py)
    base = dict(epochs=1, augment=0, vae_steps=50, holdout=0, bf16=False, min_images=2, folds=2)
    base.update(kw)
    return LearnSettings(**base)


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for helper scripts: this folder importable, per-test user folders."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["CASAM_HOME"] = str(tmp_path / "home")
    env["CASAM_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for_line(proc, timeout: float) -> str:
    """The next line a subprocess prints, or fail (with its stderr) after ``timeout`` seconds.

    Reads the pipe's file descriptor one byte at a time, so nothing after the line is pulled
    into Python's buffer, where ``proc.communicate()`` (which reads the descriptor) would never
    see it: on a loaded machine the child's next lines are often already in the pipe.
    """
    import selectors

    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            if not sel.select(max(0.0, deadline - time.monotonic())):
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(
                    f"no output from the helper process within {timeout:.0f} s: {err[-3000:]}"
                )
            byte = os.read(fd, 1)
            if not byte:
                _, err = proc.communicate()
                pytest.fail(f"the helper process ended early: {err[-3000:]}")
            data += byte
    return data.decode()


def isolate_user_dirs(tmp_path: Path, monkeypatch) -> None:
    """Keep every per-user folder (digest memo, default library, cache) inside the test."""
    monkeypatch.setenv("CASAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CASAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CASAM_LIBRARY", str(tmp_path / "default-library"))


#: the width of the tiny mask decoder of the decoder-adapter tests
DIM = 32


def tiny_decoder():
    """A small real SAM mask decoder (2 blocks, width ``DIM``), frozen, seeded."""
    from casam._sam_modeling import modeling

    m = modeling()
    torch.manual_seed(0)
    tr = m.TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=2)
    dec = m.MaskDecoder(transformer_dim=DIM, transformer=tr, iou_head_hidden_dim=DIM)
    return dec.eval().requires_grad_(False)


def run_tiny_decoder(dec, seed=1):
    """One decode of ``tiny_decoder()`` on random inputs of its width (seeded)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, DIM, 8, 8, generator=g)
    pe = torch.randn(1, DIM, 8, 8, generator=g)
    sparse = torch.randn(1, 2, DIM, generator=g)
    dense = torch.randn(1, DIM, 8, 8, generator=g)
    return dec(
        image_embeddings=z,
        image_pe=pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
