"""Bad input at the API level (issue 5): a CasamError with a one-line message saying what was
wrong and what to do, and nothing already saved is lost."""

from __future__ import annotations

import errno
import warnings

import numpy as np
import pytest
import torch
from casam_testing import (
    TinyBackbone,  # noqa: F401
    disk_images,
    one_line,
    save_task,
    snapshot,
    tiny_settings,
)

from casam.errors import CasamError, CheckpointError, InputError, LibraryError, TaskExistsError
from casam.library import (
    TaskLibrary,
    fs,
)
from casam.preprocess import CasamWarning, Geometry, check_boxes, mask_box, to_unit_rgb


@pytest.fixture(scope="module")
def predictor_factory():
    from casam.predictor import Predictor

    def make(lib):
        return Predictor(backbone=TinyBackbone(), library=lib, cache_bytes=64 << 20)

    return make


@pytest.fixture
def lib(tmp_path):
    lib = TaskLibrary(tmp_path / "lib")
    save_task(lib, "kept")
    return lib


def _img(shape, dtype=np.int16, fill=None):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 200, shape).astype(dtype)
    if fill is not None:
        a[...] = fill
    return a


# ---- images --------------------------------------------------------------------------------

BAD_IMAGES = {
    "empty 2-D": (np.zeros((0, 0), np.uint8), "0x0"),
    "empty 1-D": (np.zeros((0,), np.uint8), "shape"),
    "one pixel": (np.ones((1, 1), np.uint8), "1x1"),
    "one row": (_img((1, 64)), "1x64"),
    "scalar": (np.array(5.0), "shape"),
    "4-D": (_img((2, 3, 64, 64)), "shape"),
    "volume": (_img((5, 64, 64)), "shape"),
    "channels first": (_img((3, 64, 64)), "channels first"),
    "2 channels": (_img((64, 64, 2)), "2 channels"),
    "5 channels": (_img((64, 64, 5)), "shape"),
    "constant uint8": (np.full((64, 64), 7, np.uint8), "constant"),
    "constant int16": (np.full((64, 64), -1000, np.int16), "constant"),
    "constant float": (np.full((64, 64), 0.5, np.float32), "constant"),
    "constant bool": (np.zeros((64, 64), bool), "constant"),
    "all NaN": (np.full((64, 64), np.nan), "no finite pixel"),
    "all Inf": (np.full((64, 64), np.inf, np.float32), "no finite pixel"),
    "NaN and one value": (np.where(np.eye(64, dtype=bool), 3.0, np.nan), "constant"),
    "complex": (np.ones((64, 64), np.complex64), "pixel type"),
    "text": (np.full((64, 64), "a"), "pixel type"),
    "objects": (np.full((64, 64), None, dtype=object), "pixel type"),
    "too elongated": (_img((8, 5000)), "elongated"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_refused(case, lib, predictor_factory):
    image, needle = BAD_IMAGES[case]
    before = snapshot(lib.root)
    p = predictor_factory(lib)
    with pytest.raises(InputError) as e:
        p.set_image(image)
    assert needle in one_line(e.value)
    assert snapshot(lib.root) == before


@pytest.mark.parametrize("case", ["partial NaN", "partial Inf", "RGBA"])
def test_fixable_image_is_used_with_a_one_line_warning(case, predictor_factory, lib):
    img = _img((64, 64)).astype(np.float32)
    if case == "partial NaN":
        img[:5] = np.nan
    elif case == "partial Inf":
        img[:5, :5] = -np.inf
    else:
        img = np.dstack([_img((64, 64), np.uint8)] * 3 + [np.full((64, 64), 255, np.uint8)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = to_unit_rgb(img)
    (w,) = [w for w in caught if issubclass(w.category, CasamWarning)]
    assert "\n" not in str(w.message)
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1 and x.shape == (64, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CasamWarning)
        route = predictor_factory(lib).set_image(img)
    assert route is not None


def test_good_odd_images_are_accepted():
    for img in (
        np.arange(64, dtype=np.uint8).reshape(8, 8, 1),
        _img((64, 64), np.uint16),
        _img((64, 64), np.float64) * 1e-30,
        _img((64, 64), np.int64) - 3024,
        _img((64, 64, 3), np.uint8),
    ):
        assert to_unit_rgb(img).shape[-1] == 3


# ---- boxes -----------------------------------------------------------------------------------

BAD_BOXES = {
    "outside right": ([[100, 10, 120, 30]], "outside"),
    "outside above": ([[10, -50, 30, -10]], "outside"),
    "touching edge only": ([[64, 0, 80, 10]], "outside"),
    "zero area": ([[10, 10, 10, 30]], "zero area"),
    "sub-pixel": ([[10, 10, 10.5, 30]], "zero area"),
    "inverted x": ([[30, 10, 10, 30]], "inverted"),
    "inverted y": ([[10, 30, 30, 10]], "inverted"),
    "NaN": ([[np.nan, 1, 5, 5]], "NaN"),
    "Inf": ([[0, 0, np.inf, 5]], "NaN or infinite"),
    "three numbers": ([1, 2, 3], "shape"),
    "no boxes": (np.zeros((0, 4)), "shape"),
    "3-D": (np.zeros((1, 1, 4)), "shape"),
    "text": ([["a", "b", "c", "d"]], "numbers"),
    "ragged": ([[1, 2, 3, 4], [1, 2]], "numbers"),
    "one bad among good": ([[1, 1, 20, 20], [5, 5, 5, 9]], "box 1"),
}


@pytest.mark.parametrize("case", list(BAD_BOXES))
def test_bad_box_is_refused(case, lib, predictor_factory):
    boxes, needle = BAD_BOXES[case]
    with pytest.raises(InputError) as e:
        check_boxes(boxes, 64, 64)
    assert needle in one_line(e.value)
    p = predictor_factory(lib)
    images, _ = disk_images(1)
    p.set_image(images[0])
    with pytest.raises(InputError):
        p.predict(boxes, task="sam")


def test_box_partly_outside_is_clipped(lib, predictor_factory):
    assert check_boxes([-10, -10, 30, 100], 64, 64).tolist() == [[0, 0, 30, 64]]
    p = predictor_factory(lib)
    images, _ = disk_images(1)
    p.set_image(images[0])
    pred = p.predict([-10, -10, 30, 100], task="sam")
    assert pred.masks.shape == (1, 64, 64)


def test_predict_before_set_image_and_unknown_task(lib, predictor_factory):
    p = predictor_factory(lib)
    with pytest.raises(InputError) as e:
        p.predict([1, 1, 20, 20])
    assert "set_image" in one_line(e.value)
    images, _ = disk_images(1)
    p.set_image(images[0])
    with pytest.raises(InputError) as e:
        p.predict([1, 1, 20, 20], task="no such task")
    assert "no such task" in one_line(e.value)


def test_geometry_refuses_degenerate_sizes():
    for h, w in ((0, 10), (10, 0), (1, 1000)):
        with pytest.raises(InputError) as e:
            Geometry(h, w, 256)
        one_line(e.value)


# ---- masks and learning --------------------------------------------------------------------------


def _learn(p, lib, images, masks, name="new", **kw):
    from casam.training import learn_task

    return learn_task(
        images,
        masks,
        name,
        library=lib,
        predictor=p,
        settings=tiny_settings(min_images=5, folds=5),
        **kw,
    )


def _learn_cases():
    images, masks = disk_images(6)
    empty = [np.zeros_like(m) for m in masks]
    return {
        "no foreground at all": (images, empty, "no image has an annotated object"),
        "too few annotated": (images, masks[:4] + empty[4:], "at least 5"),
        "too few images": (images[:3], masks[:3], "at least 5"),
        "count mismatch": (images, masks[:5], "6 images but 5 masks"),
        "size mismatch": (images, masks[:5] + [np.ones((32, 32), np.uint8)], "must match"),
        "NaN mask": (images, masks[:5] + [np.full((64, 64), np.nan)], "NaN"),
        "constant image": (images[:5] + [np.zeros((64, 64), np.int16)], masks, "constant"),
        "4-D image": (images[:5] + [np.zeros((1, 1, 64, 64))], masks, "shape"),
    }


@pytest.mark.parametrize("case", list(_learn_cases()))
def test_bad_training_data_is_refused_and_library_unchanged(case, lib, predictor_factory):
    images, masks, needle = _learn_cases()[case]
    before = snapshot(lib.root)
    with pytest.raises(InputError) as e:
        _learn(predictor_factory(lib), lib, images, masks)
    assert needle in one_line(e.value)
    assert snapshot(lib.root) == before


def test_learning_an_existing_name_fails_before_any_work(lib, predictor_factory):
    images, masks = disk_images(6)
    before = snapshot(lib.root)
    p = predictor_factory(lib)
    misses = p.cache.misses
    with pytest.raises(TaskExistsError) as e:
        _learn(p, lib, images, masks, name="kept")
    assert "kept" in one_line(e.value)
    assert p.cache.misses == misses  # nothing was embedded
    assert snapshot(lib.root) == before


def test_mask_box_of_empty_mask():
    with pytest.raises(InputError) as e:
        mask_box(np.zeros((8, 8), bool))
    one_line(e.value)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    """A ViT-B shaped state dict given to LiteMedSAM: refused, with the right backbone named."""
    from casam.backbones import BACKBONES
    from casam.sam import Backbone

    ckpt = tmp_path / "vit_b.pth"
    torch.save(
        {
            "image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
            "image_encoder.pos_embed": torch.zeros(1, 64, 64, 768),
        },
        ckpt,
    )
    with pytest.raises(CheckpointError) as e:
        Backbone(BACKBONES["litemedsam"], checkpoint=ckpt, device="cpu")
    msg = one_line(e.value)
    assert "does not fit backbone litemedsam" in msg and "sam_vit_b" in msg


def test_litemedsam_checkpoint_given_to_sam_vit_b():
    """The real case (one ViT-B build, ~10 s): LiteMedSAM's weights for sam_vit_b."""
    from casam.backbones import BACKBONES
    from casam.checkpoints import bundled_litemedsam_path
    from casam.sam import Backbone

    with pytest.raises(CheckpointError) as e:
        Backbone(BACKBONES["sam_vit_b"], checkpoint=bundled_litemedsam_path(), device="cpu")
    msg = one_line(e.value)
    assert "sam_vit_b" in msg and "backbone litemedsam" in msg and "--" not in msg
    assert e.value.subject == "backbone"  # the CLI names its option (test_cli)


@pytest.mark.parametrize(
    "case", ["missing", "folder", "text", "empty", "list", "non-tensor values"]
)
def test_unusable_checkpoint_file(tmp_path, case):
    from casam.backbones import BACKBONES
    from casam.sam import Backbone

    ckpt = tmp_path / "ckpt.pth"
    if case == "folder":
        ckpt.mkdir()
    elif case == "text":
        ckpt.write_text("this is not a checkpoint")
    elif case == "empty":
        ckpt.write_bytes(b"")
    elif case == "list":
        torch.save([torch.zeros(1)], ckpt)
    elif case == "non-tensor values":
        torch.save({"a": 1}, ckpt)
    with pytest.raises(CheckpointError) as e:
        Backbone(BACKBONES["litemedsam"], checkpoint=ckpt, device="cpu")
    assert "ckpt.pth" in one_line(e.value)


def test_backbone_needing_a_checkpoint_and_unknown_backbone():
    from casam.sam import get_backbone

    with pytest.raises(CheckpointError) as e:
        get_backbone("sam_vit_h", None, "cpu")
    assert "checkpoint" in one_line(e.value) and e.value.subject == "checkpoint"
    with pytest.raises(InputError) as e:
        get_backbone("vit_z", None, "cpu")
    one_line(e.value)


# ---- unreadable files ---------------------------------------------------------------------------


def test_unreadable_task_file_is_one_problem_not_a_crash(lib, monkeypatch):
    save_task(lib, "locked")
    real_open = open

    def deny(path, *a, **k):
        if "locked" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(fs, "open", deny, raising=False)
    (problem,) = lib.problems()
    assert "Permission denied" in problem and "locked" in problem and "\n" not in problem
    with pytest.raises(LibraryError):
        lib.load("locked")
    lib.load("kept")


def test_unreadable_import_source(lib, tmp_path):
    with pytest.raises(CasamError) as e:
        lib.import_task(tmp_path / "missing.casamtask")
    one_line(e.value)
    d = tmp_path / "folder"
    d.mkdir()
    (d / "task.json").mkdir()  # a folder where a file should be
    with pytest.raises(LibraryError) as e:
        lib.import_task(d)
    one_line(e.value)
