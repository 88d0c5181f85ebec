import numpy as np
import pytest

from casam.metrics import band_width, boundary_band, boundary_iou, iou


def test_iou_hand_computed():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True  # 2 px
    b[0, 1:4] = True  # 3 px, overlap 1
    assert iou(a, b) == pytest.approx(1 / 4)
    assert iou(a, a) == 1.0
    assert iou(a, np.zeros_like(a)) == 0.0
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_boundary_band_of_a_square():
    m = np.zeros((10, 10), bool)
    m[2:8, 2:8] = True  # 6x6 square
    band1 = boundary_band(m, 1)
    assert band1.sum() == 36 - 16  # the ring of width 1
    band2 = boundary_band(m, 2)
    assert band2.sum() == 36 - 4
    full = np.ones((5, 5), bool)  # the image border counts as outside
    assert boundary_band(full, 1).sum() == 25 - 9


def test_boundary_iou_hand_computed():
    gt = np.zeros((10, 10), bool)
    gt[2:8, 2:8] = True
    pred = np.zeros((10, 10), bool)
    pred[2:8, 2:7] = True  # one column short
    # d = round(0.02 * hypot(10,10)) = max(1, 0) = 1 -> rings of width 1
    assert band_width((10, 10)) == 1
    g = boundary_band(gt, 1)
    p = boundary_band(pred, 1)
    assert boundary_iou(pred, gt) == pytest.approx((g & p).sum() / (g | p).sum())
    assert (g & p).sum() == 14 and (g | p).sum() == 24  # rings of 20 and 18 px
    assert boundary_iou(gt, gt) == 1.0


def test_boundary_iou_is_stricter_than_iou_for_large_objects():
    gt = np.zeros((200, 200), bool)
    gt[20:180, 20:180] = True
    pred = np.zeros_like(gt)
    pred[24:184, 20:180] = True
    assert boundary_iou(pred, gt) < iou(pred, gt)


def test_shape_mismatch():
    with pytest.raises(ValueError):
        iou(np.zeros((2, 2)), np.zeros((3, 3)))
