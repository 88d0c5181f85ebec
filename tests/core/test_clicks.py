"""Simulated clicks, click sessions with undo, point checks and training clicks (no model)."""

import numpy as np
import pytest
import torch

from casam.clicks import Click, ClickSession, next_click
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


class Pred:
    def __init__(self, mask):
        self.masks, self.scores, self.logits = mask[None], np.ones(1), np.zeros((1, 256, 256))


class CountingPredictor:
    """Mask = the box, plus a 3x3 square at each positive click, minus one at each negative."""

    def embed(self, image):
        return image

    def predict_embedding(
        self, e, boxes=None, task="auto", points=None, labels=None, mask_input=None
    ):
        m = np.zeros(e.shape, bool)
        if boxes is not None:
            x0, y0, x1, y1 = np.asarray(boxes, int).reshape(4)
            m[y0:y1, x0:x1] = True
        p, lab = check_points(points, labels, *e.shape)
        if boxes is None and not lab.any():
            raise InputError("only negative points")
        for (x, y), lb in zip(p.astype(int), lab, strict=True):
            m[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = bool(lb)
        return Pred(m)


def test_click_session_adds_and_undoes_exactly():
    img = np.zeros((30, 30))
    s = ClickSession(CountingPredictor(), img, box=[5, 5, 15, 15])
    m0 = s.mask.copy()
    s.add(20, 20, positive=True)
    assert s.mask[20, 20] and s.clicks == [Click(20.0, 20.0, True)]
    s.add(10, 10, positive=False)
    assert not s.mask[10, 10]
    s.undo()
    assert s.mask[10, 10] and s.mask[20, 20]
    s.undo()
    assert np.array_equal(s.mask, m0) and s.clicks == []
    with pytest.raises(InputError, match="no click to undo"):
        s.undo()


def test_a_refused_click_leaves_the_session_unchanged():
    s = ClickSession(CountingPredictor(), np.zeros((30, 30)))
    with pytest.raises(InputError, match="negative"):
        s.add(3, 3, positive=False)
    assert s.clicks == [] and s.prediction is None
    with pytest.raises(InputError, match="outside"):
        s.add(40, 3)
    assert s.clicks == []


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


def test_box_edits_reach_positive_clicks_and_cut_before_negative_ones():
    from casam.clicks import edit_box

    b = np.array([10, 10, 20, 20])
    out = edit_box(b, [Click(25, 15, True)], 40, 40)[0]
    assert out[2] >= 26 and out[0] == 10 and out[1] == 10 and out[3] == 20
    out = edit_box(b, [Click(18, 15, False)], 40, 40)[0]
    assert list(out) == [10, 10, 18, 20]  # the right side moved left of the click
    out = edit_box(None, [Click(5, 5, True)], 40, 40)[0]
    assert out[0] <= 5 < out[2] and out[1] <= 5 < out[3] and out.min() >= 0
    with pytest.raises(InputError, match="negative"):
        edit_box(None, [Click(5, 5, False)], 40, 40)


def test_box_mode_sends_no_points():
    seen = []

    class Spy(CountingPredictor):
        def predict_embedding(self, e, boxes=None, task="auto", points=None, **kw):
            seen.append((np.asarray(boxes).copy(), points))
            return super().predict_embedding(e, boxes, task, points, **kw)

    s = ClickSession(Spy(), np.zeros((30, 30)), box=[5, 5, 15, 15], mode="box")
    s.add(25, 10, True)
    assert seen[-1][1] is None and seen[-1][0][0, 2] >= 26
