"""The click rule (casam.correct) on synthetic images with a stand-in SAM that finds the true
object inside any box: what a click adds and removes, that the rest of the mask is unchanged,
the fine-click disc, undo, and that a session and Predictor-style apply_clicks agree."""

from dataclasses import dataclass

import numpy as np
import pytest

from casam.clicks import ClickSession
from casam.correct import ClickSettings, apply_clicks, click_scale, local_boxes
from casam.errors import InputError
from casam.preprocess import Geometry
from casam.sam import Backbone

H, W = 120, 100
TRUTH = np.zeros((H, W), bool)
TRUTH[20:90, 15:75] = True  # the object: a 70 x 60 rectangle
SAM_FROM = ClickSettings().sam_from


@dataclass
class Emb:
    geometry: Geometry


@dataclass
class Pred:
    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


class FakeBackbone:
    input_size = 256
    upscale_masks = Backbone.upscale_masks
    lowres_target = Backbone.lowres_target


class BoxSAM:
    """SAM that, in every box, finds the true object's part inside it (and counts decodes)."""

    def __init__(self, truth=TRUTH):
        self.truth, self.backbone, self.calls = truth, FakeBackbone(), []

    def embed(self, image):
        return Emb(Geometry(*np.asarray(image).shape[:2], 256))

    def resolve_task(self, e, task):
        return (None if task in (None, "sam", "auto") else task), "route"

    def sam_prompts(self, e, boxes, task="auto", points=None, labels=None, mask_input=None):
        b = np.asarray(boxes, float).reshape(-1, 4)
        self.calls.append((b.copy(), points))
        masks = []
        for x0, y0, x1, y1 in np.round(b).astype(int):
            m = np.zeros_like(self.truth)
            m[y0:y1, x0:x1] = self.truth[y0:y1, x0:x1]
            masks.append(m)
        masks = np.array(masks)
        lo = np.array([self.backbone.lowres_target(m, e.geometry).numpy() * 8 - 4 for m in masks])
        return Pred(masks, np.full(len(masks), 0.9), lo.astype(np.float32))


def session(start, sam=None, **kw):
    return ClickSession(sam or BoxSAM(), np.zeros((H, W)), mask=start, task="sam", **kw)


def test_a_positive_click_adds_the_missed_part_near_it_and_nothing_far_away():
    start = TRUTH.copy()
    start[20:40, 55:75] = False  # a missed 20 x 20 corner
    start[70:90, 15:30] = False  # another miss, far from the click
    s = session(start)
    s.add(65, 30, True)  # the centre of the corner: 10 px from the mask
    assert s.decodes == len(ClickSettings().sizes)  # SAM's local boxes: one decode each
    assert s.mask[20:40, 55:75].all()  # the corner is back
    assert not s.mask[70:90, 15:30].any()  # the far miss is not touched
    assert not (s.mask & ~TRUTH).any()  # nothing outside the object was added
    changed = s.mask ^ start
    assert changed.sum() == 400


def test_a_negative_click_removes_the_false_positive_it_sits_in_and_keeps_the_rest():
    start = TRUTH.copy()
    start[40:60, 75:95] = True  # a leak to the right of the object
    start[95:100, 20:30] = True  # another false positive, far away
    s = session(start)
    s.add(85, 50, False)
    assert not s.mask[40:60, 75:95].any()  # the leak is gone
    assert (s.mask == (TRUTH | (start & ~TRUTH & (np.arange(H)[:, None] >= 95)))).all()
    assert s.mask[TRUTH].all()  # the object itself is untouched


def test_a_fine_error_is_corrected_with_a_disc_inside_it_and_no_decode():
    start = TRUTH.copy()
    start[50:54, 30:34] = False  # a 4 x 4 hole
    s = session(start)
    x, y = 32, 52
    scale = click_scale(start, x, y, True)
    assert scale == 2 and scale < SAM_FROM
    s.add(x, y, True)
    assert s.decodes == 0
    added = s.mask & ~start
    assert added[y, x] and added.sum() == 9  # the disc of radius 1.5 about the click
    assert not (added & ~TRUTH).any() and np.array_equal(s.mask | ~TRUTH, start | added | ~TRUTH)


def test_undo_restores_each_mask_exactly_and_a_session_equals_apply_clicks():
    start = TRUTH.copy()
    start[20:40, 55:75] = False
    start[40:60, 75:95] = True
    clicks = [(65, 30, True), (85, 50, False), (15, 52, False)]
    sam = BoxSAM()
    s = session(start, sam)
    masks = [s.mask.copy()]
    for c in clicks:
        s.add(*c)
        masks.append(s.mask.copy())
    e = sam.embed(np.zeros((H, W)))
    once = apply_clicks(sam, e, None, clicks, "sam", mask=start)
    assert np.array_equal(once.mask, masks[-1])  # the dock's path and the API's agree
    for i in range(len(clicks), 0, -1):
        assert np.array_equal(s.mask, masks[i])
        s.undo()
    assert np.array_equal(s.mask, start) and s.clicks == []
    with pytest.raises(InputError, match="no click to undo"):
        s.undo()


def test_clicks_from_a_box_start_from_sams_box_mask():
    sam = BoxSAM()
    box = [10, 15, 80, 95]
    s = ClickSession(sam, np.zeros((H, W)), box=box, task="sam")
    assert np.array_equal(s.mask, TRUTH) and len(sam.calls) == 1
    s.add(50, 50, True)  # already object: nothing to correct, no decode
    assert np.array_equal(s.mask, TRUTH) and len(sam.calls) == 1 and s.decodes == 0


def test_a_first_positive_click_with_no_object_finds_it_and_a_negative_one_is_refused():
    s = ClickSession(BoxSAM(), np.zeros((H, W)), task="sam")
    with pytest.raises(InputError, match="only negative clicks"):
        s.add(40, 50, False)
    assert s.clicks == [] and s.mask is None
    with pytest.raises(InputError, match="outside"):
        s.add(W + 3, 5, True)
    s.add(40, 50, True)
    assert s.mask[50, 40] and not (s.mask & ~TRUTH).any() and s.mask.sum() > 100


def test_local_boxes_centre_on_the_click_and_stay_in_the_image():
    b = local_boxes(50, 60, 10, (H, W), ClickSettings(sizes=(1.5, 3.0)))
    assert np.allclose((b[:, 0] + b[:, 2]) / 2, 50.5) and np.allclose(b[:, 2] - b[:, 0], [30, 60])
    edge = local_boxes(2, 2, 10, (H, W), ClickSettings())
    assert edge.min() >= 0 and (edge[:, 2] <= W).all()


def test_points_mode_sends_every_click_to_sam_as_points():
    sam = BoxSAM()
    s = ClickSession(sam, np.zeros((H, W)), box=[10, 15, 80, 95], task="sam", mode="points")
    s.add(5, 5, False)
    assert sam.calls[-1][1] == [(5.0, 5.0)]
