"""A learned adapter's strength (``LearnSettings.choose_strength``): the layer shrunk toward the
identity (0 = plain SAM), chosen on the task's held-out slices, stored like any adapter."""

import json

import numpy as np
import torch
from casam_testing import TinyBackbone, disk_images, tiny_settings

from casam import training
from casam.alignment import AlignmentLayer
from casam.library import META, TaskLibrary
from casam.predictor import Predictor
from casam.task_adapter import TaskAdapter, new_adapter, with_strength


def trained_layer(blocks: int = 1) -> TaskAdapter:
    g = torch.Generator().manual_seed(0)
    layer = AlignmentLayer(blocks)
    layer.set_scale(torch.randn(2, 256, 8, 8, generator=g))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return TaskAdapter("alignment", layer.eval())


def test_strength_zero_is_the_identity_and_one_leaves_the_layer_as_trained():
    a = trained_layer(blocks=2)
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in a.module.state_dict().items()}
    assert not torch.allclose(a.module(z), z)
    assert torch.equal(with_strength(a, 0.0, None).module(z), z)
    assert torch.allclose(with_strength(a, 1.0, None).module(z), a.module(z))
    after = a.module.state_dict()  # the original is not touched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(with_strength(a, 0.5, None).state()) == set(before)


def test_one_block_at_strength_a_is_the_blend_toward_the_identity():
    a = trained_layer(blocks=1)
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(2))
    full = a.module(z)
    half = with_strength(a, 0.5, None).module(z)
    assert torch.allclose(half, z + 0.5 * (full - z), atol=1e-6)


def test_decoder_adapters_at_strength_zero_decode_like_plain_sam():
    bb = TinyBackbone()
    s = tiny_settings(adapter="decoder")
    a = new_adapter(bb, s)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in a.module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    z = torch.randn(1, 256, 64, 64, generator=g)
    box = torch.tensor([[10.0, 10.0, 200.0, 200.0]])
    sam = bb.decode(z, box)[0]
    assert not torch.allclose(a.decode(bb, z, box)[0], sam)
    assert torch.allclose(with_strength(a, 0.0, bb).decode(bb, z, box)[0], sam, atol=1e-5)


def test_choose_strength_keeps_the_best_held_out_iou_plain_sam_included():
    assert training.choose_strength({}) == 1.0
    worse = {0.0: (0.8, 0.7), 0.5: (0.79, 0.7), 1.0: (0.75, 0.6)}
    assert training.choose_strength(worse) == 0.0
    mid = {0.0: (0.5, 0.4), 0.5: (0.7, 0.6), 1.0: (0.6, 0.5)}
    assert training.choose_strength(mid) == 0.5
    tie = {0.0: (0.5, 0.4), 1.0: (0.5, 0.4)}
    assert training.choose_strength(tie) == 1.0


def test_learning_with_held_out_images_records_the_strength_and_never_reports_below_sam(
    tmp_path,
):
    images, masks = disk_images(6, seed=4)
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(tmp_path / "lib"))
    s = tiny_settings(epochs=2, batch_size=2)
    info = training.learn_task(
        images[:4], masks[:4], "disks", predictor=p, settings=s, holdout=(images[4:], masks[4:])
    )
    assert info.n_images == 4 and info.n_holdout == 2
    meta = json.loads((tmp_path / "lib" / "disks" / META).read_text())
    strengths = meta["settings"]["strength_iou"]
    assert set(strengths) == {"0", "0.25", "0.5", "0.75", "1"}
    kept = meta["settings"]["strength"]
    assert np.isclose(info.iou_task, strengths[f"{kept:g}"])
    assert np.isclose(info.iou_sam, strengths["0"]) and info.iou_task >= info.iou_sam
    assert info.iou_task == max(strengths.values())


def test_without_choosing_the_adapter_is_kept_as_trained(tmp_path):
    images, masks = disk_images(6, seed=5)
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(tmp_path / "lib"))
    s = tiny_settings(epochs=2, batch_size=2, choose_strength=False)
    training.learn_task(
        images[:4], masks[:4], "disks", predictor=p, settings=s, holdout=(images[4:], masks[4:])
    )
    meta = json.loads((tmp_path / "lib" / "disks" / META).read_text())
    assert meta["settings"]["strength"] == 1.0 and set(meta["settings"]["strength_iou"]) == {
        "0",
        "1",
    }
