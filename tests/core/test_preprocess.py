import numpy as np
import pytest
import torch

from casam.errors import InputError
from casam.preprocess import CasamWarning, Geometry, check_boxes, mask_box, to_unit_rgb


def test_uint8_is_taken_as_is():
    a = np.array([[0, 51], [102, 255]] * 4, dtype=np.uint8).repeat(4, axis=1)
    x = to_unit_rgb(a)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    assert x[0, 0, 0] == 0 and x[0, 4, 1] == pytest.approx(0.2) and x[1, 4, 2] == 1.0


def test_ct_values_are_percentile_windowed():
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1500, (64, 64)).astype(np.int16)
    ct[0, 0] = -32768  # a padding value must not squash the window
    x = to_unit_rgb(ct)
    lo, hi = np.percentile(ct.astype(np.float32), (0.5, 99.5))
    inside = (ct > lo) & (ct < hi)
    assert np.allclose(x[..., 0][inside], (ct[inside] - lo) / (hi - lo), atol=1e-5)
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.median(x) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64, np.int32])
def test_dtypes_map_to_unit_range(dtype):
    a = (np.arange(32 * 32).reshape(32, 32) % 700).astype(dtype)
    x = to_unit_rgb(a)
    assert x.min() >= 0 and x.max() <= 1 and x.max() - x.min() > 0.9
    assert np.array_equal(x[..., 0], x[..., 2])


def test_rgb_and_rgba():
    rgb = np.random.default_rng(1).integers(0, 255, (16, 20, 3)).astype(np.uint8)
    assert np.allclose(to_unit_rgb(rgb), rgb / 255.0)
    rgba = np.concatenate([rgb, np.full((16, 20, 1), 255, np.uint8)], axis=2)
    with pytest.warns(CasamWarning, match="alpha"):
        assert np.allclose(to_unit_rgb(rgba), rgb / 255.0)


def test_nan_pixels_are_filled_with_a_warning():
    a = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    a[3, 3] = np.nan
    with pytest.warns(CasamWarning, match="NaN"):
        x = to_unit_rgb(a)
    assert np.isfinite(x).all() and x[3, 3, 0] == 0.0


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((32, 32), np.uint8), "constant"),
        (np.full((32, 32), 7.5, np.float32), "constant"),
        (np.zeros((1, 1), np.uint16), "at least"),
        (np.zeros((0, 5), np.uint16), "at least"),
        (np.zeros((2, 3, 32, 32), np.uint16), "shape"),
        (np.full((16, 16), np.nan, np.float32), "finite"),
        (np.zeros((16, 16, 2), np.uint8), "2 channels"),
        (np.array([["a"] * 16] * 16), "pixel type"),
    ],
)
def test_bad_images_get_one_line_messages(image, match):
    with pytest.raises(InputError, match=match) as e:
        to_unit_rgb(image)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "hw", [(300, 200), (200, 300), (256, 256), (17, 1000), (1000, 17), (64, 65)]
)
@pytest.mark.parametrize("size", [256, 1024])
def test_geometry_round_trip(hw, size):
    geo = Geometry(*hw, size)
    rh, rw = geo.resized
    assert max(rh, rw) == size and rh <= size and rw <= size
    boxes = np.array([[0, 0, hw[1], hw[0]], [3.5, 2, 10, 12]])
    back = geo.boxes_from_input(geo.boxes_to_input(boxes))
    assert np.allclose(back, boxes, atol=1e-3)
    full = geo.boxes_to_input(boxes[:1])[0]
    assert np.allclose(full, [0, 0, rw, rh], atol=1e-3)


def test_masks_map_back_to_original_size_exactly():
    from casam.backbones import BACKBONES
    from casam.sam import Backbone

    bb = Backbone.__new__(Backbone)  # geometry helpers only; no weights needed
    bb.input_size = 256
    geo = Geometry(300, 200, 256)
    mask = np.zeros((300, 200), bool)
    mask[40:160, 50:130] = True
    target = bb.lowres_target(mask, geo)  # (256, 256) in the decoder's frame
    assert target.shape == (256, 256) and target[..., geo.resized[1] :].sum() == 0
    logits = (target * 2 - 1)[None, None] * 10
    back = (bb.upscale_masks(logits, geo)[0] > 0).numpy()
    assert back.shape == (300, 200)
    assert (back ^ mask).sum() / mask.sum() < 0.03
    assert "litemedsam" in BACKBONES


def test_check_boxes_clips_and_refuses():
    out = check_boxes([[-10, -5, 50, 40], [5, 5, 500, 500]], 100, 80)
    assert np.array_equal(out, [[0, 0, 50, 40], [5, 5, 80, 100]])
    for bad, match in [
        ([10, 10, 5, 20], "inverted"),
        ([10, 10, 10, 20], "zero area"),
        ([200, 200, 300, 300], "outside"),
        ([1, 2, 3], "shape"),
        ([0, 0, np.nan, 4], "NaN"),
    ]:
        with pytest.raises(InputError, match=match):
            check_boxes(bad, 100, 80)


def test_mask_box():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert mask_box(m).tolist() == [3, 2, 9, 5]
    with pytest.raises(InputError, match="no foreground"):
        mask_box(np.zeros((4, 4)))


def test_lowres_target_is_binary():
    from casam.sam import Backbone

    bb = Backbone.__new__(Backbone)
    bb.input_size = 1024
    t = bb.lowres_target(np.ones((50, 80), bool), Geometry(50, 80, 1024))
    assert set(torch.unique(t).tolist()) <= {0.0, 1.0} and t.sum() > 0
