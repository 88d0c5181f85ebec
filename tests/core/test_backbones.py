import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from casam.backbones import BACKBONES, resolve_device
from casam.checkpoints import bundled_litemedsam_path, download_checkpoint
from casam.errors import CheckpointError, InputError
from casam.sam import Backbone, get_backbone


def test_download_offline_fails_clearly_and_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="give its path as the checkpoint") as e:
        download_checkpoint(
            "sam_vit_b", tmp_path, url="http://127.0.0.1:9/sam_vit_b_01ec64.pth", timeout=5
        )
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_download_verifies_the_checksum(tmp_path, monkeypatch):
    src = tmp_path / "src" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(b"not the real weights")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="SHA-256"):
        download_checkpoint("sam_vit_b", out, url=src.as_uri())
    assert list(out.iterdir()) == []
    good = replace(
        BACKBONES["sam_vit_b"], checkpoint_sha256=hashlib.sha256(src.read_bytes()).hexdigest()
    )
    monkeypatch.setitem(BACKBONES, "sam_vit_b", good)
    path = download_checkpoint("sam_vit_b", out, url=src.as_uri())
    assert path.read_bytes() == src.read_bytes()


def test_registry_and_errors():
    assert set(BACKBONES) == {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b"}
    with pytest.raises(InputError, match="unknown backbone"):
        get_backbone("vit_z")
    with pytest.raises(CheckpointError, match="needs a checkpoint"):
        get_backbone("sam_vit_b")
    with pytest.raises(CheckpointError, match="does not exist"):
        get_backbone("medsam_vit_b", checkpoint="/nonexistent/medsam.pth")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError):
        resolve_device("tpu")


def test_litemedsam_identity_and_embedding():
    bb = get_backbone("litemedsam", device="cpu")
    assert bb.identity == "litemedsam:" + bb.digest[:12] and len(bb.digest) == 64
    assert get_backbone("litemedsam", device="cpu") is bb  # built once per process
    img = np.zeros((90, 120), np.int16)
    img[30:60, 40:90] = 500
    z, geo = bb.encode(img)
    assert z.shape == (256, 64, 64) and z.dtype == torch.float32 and geo.resized == (192, 256)
    logits, iou = bb.decode(z[None], torch.from_numpy(geo.boxes_to_input([[35, 25, 95, 65]])))
    mask = (bb.upscale_masks(logits, geo)[0] > 0).numpy()
    assert mask.shape == (90, 120)
    inside = mask[30:60, 40:90].mean()
    assert inside > 0.8 and mask.sum() < 2 * 30 * 50


def test_paired_decode_equals_one_by_one():
    bb = get_backbone("litemedsam", device="cpu")
    z = torch.randn(3, 256, 64, 64) * 0.1
    boxes = torch.tensor([[10.0, 10, 100, 100], [50, 60, 200, 220], [0, 0, 256, 256]])
    with torch.no_grad():
        paired, iou = bb.decode(z, boxes)
        for i in range(3):
            single, iou1 = bb.decode(z[i : i + 1], boxes[i : i + 1])
            assert torch.allclose(paired[i], single[0], atol=1e-4)
            assert torch.allclose(iou[i], iou1[0], atol=1e-5)


def test_wrong_checkpoint_for_backbone(tmp_path, monkeypatch):
    # LiteMedSAM's weights given to the SAM ViT-B architecture: refused, with a hint
    bad = tmp_path / "lite.pth"
    bad.write_bytes(bundled_litemedsam_path().read_bytes())
    with pytest.raises(CheckpointError, match="litemedsam") as e:
        Backbone(BACKBONES["sam_vit_b"], bad, "cpu")
    assert "\n" not in str(e.value)
