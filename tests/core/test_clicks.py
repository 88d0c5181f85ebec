"""Simulated clicks, point checks and training clicks (no model; the click rule and sessions:
test_click_rule.py)."""

import numpy as np
import pytest
import torch

from casam.clicks import next_click
from casam.errors import InputError
from casam.preprocess import Geometry
from casam.prompts import check_mask_input, check_points, points_to_input, sample_points


def test_next_click_goes_to_the_centre_of_the_largest_error():
    gt = np.zeros((40, 40), bool)
    gt[5:25, 5:25] = True
    pred = gt.copy()
    pred[5:25, 15:25] = False  # missed a 20 x 10 strip
    pred[30:33, 30:33] = True  # small false positive
    c = next_click(pred, gt)
    assert c.positive and 15 <= c.x < 25 and 5 <= c.y < 25
    assert abs(c.x - 19.5) <= 1 and 9 <= c.y <= 20  # 5 pixels from every edge
    pred = gt.copy()
    pred[26:38, 5:25] = True  # big false positive below
    c = next_click(pred, gt)
    assert not c.positive and 26 <= c.y < 38
    assert next_click(gt, gt) is None


@pytest.mark.parametrize(
    "points, labels, words",
    [
        ([[30, 5]], None, "outside the 30x20 image"),
        ([[5, -1]], None, "outside"),
        ([[5, 5]], [2], "1 \\(positive\\) or 0"),
        ([[5, 5], [6, 6]], [1], "2 points but 1 labels"),
        ([[5, np.nan]], None, "NaN"),
        ([[1, 2, 3]], None, "shape"),
    ],
)
def test_bad_points_are_one_clear_error(points, labels, words):
    with pytest.raises(InputError, match=words):
        check_points(points, labels, 20, 30)


def test_points_scale_like_boxes_and_mask_input_is_checked():
    geo = Geometry(100, 200, 256)
    p = points_to_input(geo, np.array([[200, 100], [0, 0]]))
    assert np.allclose(p, [[256, 128], [0, 0]])
    assert check_mask_input(np.zeros((1, 256, 256))).shape == (1, 1, 256, 256)
    with pytest.raises(InputError, match="low-res logits"):
        check_mask_input(np.zeros((64, 64)))


def test_training_clicks_fall_inside_for_positives_and_outside_for_negatives():
    t = torch.zeros(8, 256, 256)
    t[:, 100:150, 60:120] = 1
    boxes = torch.tensor([[40.0, 80, 140, 170]]).repeat(8, 1)
    pts, lab = sample_points(t, boxes, 256, torch.Generator().manual_seed(0))
    assert pts.shape == (8, 3, 2) and lab.shape == (8, 3)
    assert (lab[:, 0] == 1).all() and (lab == 0).any() and (lab == -1).any()
    for i in range(8):
        for (x, y), lb in zip(pts[i].long(), lab[i], strict=True):
            if lb == 1:
                assert t[i, y, x] == 1
            elif lb == 0:
                assert t[i, y, x] == 0 and 40 <= x < 140 and 80 <= y < 170
