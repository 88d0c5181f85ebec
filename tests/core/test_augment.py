"""``LearnSettings.augment``: the adapter also trains on augmented copies of the training images
(``casam.augment``), their masks moved along; held-out images and the router stay real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from casam_testing import TinyBackbone, tiny_settings
from scipy.ndimage import binary_dilation

from casam import training
from casam.augment import augment_masks, augment_pair, copy_rng
from casam.config import LearnSettings
from casam.errors import InputError
from casam.library import TaskLibrary
from casam.predictor import Predictor


def scene(k: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like slice (HU) with two objects off-centre (labels 1 and 2), mask aligned."""
    img = np.full((64, 64), -800, np.int16)
    m = np.zeros((64, 64), np.uint8)
    m[8 + k : 20 + k, 6:22] = 1
    m[38:52, 40 - k : 58 - k] = 2
    img[m == 1], img[m == 2] = 300, 800
    return img, m


def test_masks_move_with_the_image_and_the_draws_ignore_the_masks():
    img, m = scene(0)
    flips = set()
    for seed in range(12):
        u, (a, b) = augment_masks(img, [m == 1, m == 2], np.random.default_rng(seed))
        same, _ = augment_pair(img, None, np.random.default_rng(seed))
        assert np.array_equal(u, same)  # the masks do not change the image
        assert u.dtype == np.float32 and a.shape == b.shape == img.shape
        # every masked pixel of the copy is bright, every pixel 2 px away from them dark
        # (the image is interpolated linearly at the edges, the masks by nearest neighbour)
        both = a | b
        assert u[both].min() > 0.25
        assert u[~binary_dilation(both, iterations=2)].max() < 0.2
        flips.add(bool(a[:, 32:].sum() > a[:, :32].sum()))  # object 1 sits on the left
    assert flips == {True, False}  # some copies are flipped left-right, some are not


def learn(tmp_path, monkeypatch, seed=0, augment=2, name="t"):
    """Learn 4 training + 1 held-out scene; record what the adapter, router, evaluation and
    encoder were given."""
    seen: dict = {"embedded": []}
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(tmp_path / "lib"))
    orig_embed, orig_train = p.iter_embed, training.train_adapter
    orig_router, orig_eval = training.router_stage, training._evaluate

    def iter_embed(images):
        images = list(images)
        seen["embedded"] += images
        return orig_embed(images)

    def train_adapter(bb, z, boxes, targets, s, prev, where, gen):
        seen.update(z=z, boxes=boxes, targets=targets, where=where)
        return (yield from orig_train(bb, z, boxes, targets, s, prev, where, gen))

    def router_stage(emb, order, previous, s):
        seen["router_images"] = list(order)
        return (yield from orig_router(emb, order, previous, s))

    def evaluate(bb, adapter, emb, hold, *a):
        seen["held_images"] = sorted({x.image for x in hold})
        return (yield from orig_eval(bb, adapter, emb, hold, *a))

    monkeypatch.setattr(p, "iter_embed", iter_embed)
    monkeypatch.setattr(training, "train_adapter", train_adapter)
    monkeypatch.setattr(training, "router_stage", router_stage)
    monkeypatch.setattr(training, "_evaluate", evaluate)
    pairs = [scene(k) for k in range(5)]
    info = training.learn_task(
        [i for i, _ in pairs[:4]],
        [m for _, m in pairs[:4]],
        name,
        predictor=p,
        settings=tiny_settings(augment=augment, seed=seed),
        holdout=([pairs[4][0]], [pairs[4][1]]),
    )
    return info, seen, p


def test_augment_triples_the_adapter_samples_and_nothing_else(tmp_path, monkeypatch):
    info, seen, _ = learn(tmp_path, monkeypatch, augment=2)
    # 4 training images x 2 objects, plus 2 copies of each (objects stay inside: shift <= 5%)
    assert seen["boxes"].shape[0] == 3 * 8 and seen["targets"].shape[0] == 24
    assert seen["z"].shape[0] == 3 * 4 and int(seen["where"].max()) == 11
    assert seen["router_images"] == [0, 1, 2, 3]  # the router: real training images only
    assert seen["held_images"] == [4]  # the held-out image is scored, as it is
    assert info.n_images == 4 and info.n_objects == 8 and info.n_holdout == 1
    assert info.settings["augment"] == 2
    # the encoder saw the 5 real images, then copies of the 4 training images only
    real = [scene(k)[0] for k in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(seen["embedded"][:5], real, strict=True))
    copies = seen["embedded"][5:]
    expect = [augment_masks(real[k], [], copy_rng(0, k, c))[0] for k in range(4) for c in range(2)]
    assert len(copies) == 8
    assert all(np.array_equal(a, b) for a, b in zip(copies, expect, strict=True))
    # each copy's targets follow its objects: the same objects, moved (not the real masks)
    real_t = seen["targets"][:8]
    for j in range(8, 24):
        assert float(seen["targets"][j].sum()) > 0
        assert not any(torch.equal(seen["targets"][j], t) for t in real_t)


def test_augment_zero_is_the_real_images_only(tmp_path, monkeypatch):
    _, seen, _ = learn(tmp_path, monkeypatch, augment=0)
    assert seen["boxes"].shape[0] == 8 and len(seen["embedded"]) == 5


def test_same_seed_same_task_other_seed_other_copies(tmp_path, monkeypatch):
    _, a, p = learn(tmp_path / "a", monkeypatch, seed=3)
    wa = {k: v.clone() for k, v in p.library.load("t").alignment.items()}
    _, b, p = learn(tmp_path / "b", monkeypatch, seed=3)
    wb = p.library.load("t").alignment
    assert all(np.array_equal(x, y) for x, y in zip(a["embedded"], b["embedded"], strict=True))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # another seed draws other copies (the same training images and objects)
    imgs = [scene(k)[0] for k in range(4)]
    samples = [training.Sample(k, scene(k)[1] == 1) for k in range(4)]
    other, _ = training._augmented(imgs, [0, 1, 2, 3], samples, tiny_settings(augment=2, seed=4))
    assert not np.array_equal(a["embedded"][5], other[0])


def test_a_task_stored_without_the_setting_had_no_copies():
    stored = {k: v for k, v in LearnSettings().to_dict().items() if k != "augment"}
    assert LearnSettings.from_dict(stored).augment == 0
    assert LearnSettings.from_dict({**stored, "augment": 2}).augment == 2
    with pytest.raises(InputError, match="augment"):
        LearnSettings(augment=-1)


def test_copies_keep_uint8_so_they_are_scaled_like_their_image():
    img, m = scene(1)
    u8 = ((img.astype(float) + 800) / 1600 * 255).astype(np.uint8)
    s = tiny_settings(augment=2)
    for image, dtype in ((img, np.float32), (u8, np.uint8)):
        extra, samples = training._augmented([image], [0], [training.Sample(0, m == 1)], s)
        assert [e.dtype for e in extra] == [dtype, dtype]
        assert [x.image for x in samples] == [1, 2]  # numbered after the real images
