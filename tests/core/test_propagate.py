"""Propagation mechanics with a fake predictor (no model): stop rules, locks, routing, prefetch,
cancel, bad input. The real-model check is in test_propagate_real.py."""

import threading

import numpy as np
import pytest

from casam.errors import Cancelled, InputError
from casam.progress import drive
from casam.propagate import (
    PropagateSettings,
    check_volume,
    iter_propagate,
    neighbour_prompt,
    propagate,
    stop_reason,
)


class FakeEmbedding:
    def __init__(self, image):
        self.image = image
        self.key = hash(image.tobytes())


class FakePrediction:
    def __init__(self, mask, score, task):
        self.masks, self.scores, self.task = mask[None], np.array([score]), task
        self.logits = np.zeros((1, 256, 256), np.float32)


class FakePredictor:
    """'Segments' the bright pixels inside the box; the task is read from the slice's corner
    pixel (1 -> 'a', 2 -> 'b'), the score from pixel (0, 1) / 100."""

    def __init__(self):
        self.cached, self.embed_threads, self.calls = set(), [], []

    def embed(self, image):
        self.embed_threads.append(threading.current_thread().name)
        self.cached.add(image.tobytes())
        return FakeEmbedding(image)

    def is_cached(self, image):
        return image.tobytes() in self.cached

    def predict_embedding(
        self, e, boxes=None, task="auto", points=None, labels=None, mask_input=None
    ):
        self.calls.append(boxes)
        img = e.image
        x0, y0, x1, y1 = np.asarray(boxes, float).reshape(4)
        inside = np.zeros(img.shape, bool)
        inside[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        used = {1: "a", 2: "b"}.get(int(img[0, 0])) if task == "auto" else task
        used = None if used == "sam" else used
        return FakePrediction((img >= 100) & inside, img[0, 1] / 100, used)


def ball_volume(n=21, size=48, radius=8.0, centre=10):
    """A bright ball: slices centre-radius .. centre+radius hold a disc, the rest are empty."""
    z, y, x = np.mgrid[:n, :size, :size]
    v = np.where((z - centre) ** 2 + (y - 24) ** 2 + (x - 24) ** 2 <= radius**2, 200, 10)
    v = v.astype(np.int16)
    v[:, 0, 0], v[:, 0, 1] = 1, 90  # task 'a', score 0.9
    return v


def gt_box(v, k):
    ys, xs = np.nonzero(v[k] >= 100)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_ball_is_followed_to_both_ends_and_stops_when_empty():
    v = ball_volume()
    s = PropagateSettings(min_pixels=3, min_shrink=0.05, prefetch=0)
    r = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=s)
    truth = v >= 100
    truth[:, 0, :2] = False
    big = truth.sum((1, 2)) >= 3
    assert np.array_equal(r.masks[big], truth[big])
    assert not r.masks[~big].any()
    assert r.stops["up"].startswith("empty at") and r.stops["down"].startswith("empty at")
    assert r.indices == [int(i) for i in np.nonzero(big)[0]]
    assert all(x.task == "a" and x.score == pytest.approx(0.9) for x in r.slices)


def test_low_score_and_area_jump_stop_a_direction():
    v = ball_volume()
    v[13, 0, 1] = 20  # SAM 'doubts' slice 13
    v[7, 5:45, 5:45] = 200  # slice 7 leaks into a big neighbour: the mask fills the box
    s = PropagateSettings(min_pixels=3, max_growth=1.5, prefetch=0)
    r = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=s)
    assert r.stops == {"up": "low score at 13", "down": "area jump at 7"}
    assert r.indices == [8, 9, 10, 11, 12]
    assert not r.masks[13].any() and not r.masks[7].any()


def test_stop_reason_rules():
    s = PropagateSettings(
        min_score=0.5,
        min_pixels=10,
        min_shrink=0.2,
        max_growth=2.0,
        min_score_ratio=0.9,
        min_overlap=0.5,
        max_shift=2.0,
    )
    assert stop_reason(5, 0.9, 100, s) == "empty"
    assert stop_reason(50, 0.4, 50, s) == "low score"
    assert stop_reason(15, 0.9, 100, s) == "collapse"
    assert stop_reason(250, 0.9, 100, s) == "area jump"
    assert stop_reason(120, 0.9, 100, s) is None
    assert stop_reason(120, 0.7, 100, s, seed_score=0.75) is None  # 0.7 >= 0.9 x 0.75
    assert stop_reason(120, 0.7, 100, s, seed_score=0.9) == "score drop"
    assert stop_reason(120, 0.7, 100, s, seed_score=float("nan")) is None  # hand-drawn seed
    assert stop_reason(120, 0.9, 100, s, overlap=0.4) == "no overlap"
    assert stop_reason(120, 0.9, 100, s, overlap=0.6, shift=2.5) == "appearance"
    assert stop_reason(120, 0.9, 100, s, overlap=0.6, shift=1.5) is None


def test_relative_score_overlap_and_appearance_each_end_a_direction():
    """With the absolute rules unable to fire, each relative rule stops where it should."""
    loose = dict(min_pixels=3, min_shrink=0.01, max_growth=100.0, min_score=0.0, prefetch=0)
    v = ball_volume()
    v[13, 0, 1] = 70  # SAM's estimate 0.7 on slice 13: above 0.5, below 0.9 x the seed's 0.9
    s = PropagateSettings(**loose, min_score_ratio=0.9, min_overlap=0.0, max_shift=float("inf"))
    r = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=s)
    assert r.stops["up"] == "score drop at 13" and max(r.indices) == 12
    v = ball_volume()
    v[7, 8:41, 8:41] = 10  # the disc is gone from slice 7, a bright corner sits in its box
    v[7, 30:40, 30:40] = 200
    s = PropagateSettings(**loose, min_score_ratio=0.0, min_overlap=0.3, max_shift=float("inf"))
    r = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=s)
    assert r.stops["down"] == "no overlap at 7" and min(r.indices) == 8
    v = ball_volume()
    v[12][v[12] >= 100] = 400  # same place, another tissue
    s = PropagateSettings(**loose, min_score_ratio=0.0, min_overlap=0.0, max_shift=3.0)
    r = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=s)
    assert r.stops["up"] == "appearance at 12" and max(r.indices) == 11
    assert not r.masks[12].any()


def test_box_momentum_carries_part_of_the_previous_box():
    v = ball_volume()
    fake = FakePredictor()
    wide = [4.0, 4.0, 44.0, 44.0]  # the user's box, far wider than the disc
    s = PropagateSettings(
        min_pixels=3,
        prefetch=0,
        seed_margins=False,
        box_pad=0.0,
        box_margin=0.0,
        box_momentum=0.5,
        min_score_ratio=0.0,
    )
    propagate(fake, v, 10, box=wide, settings=s)
    seed_box = np.array(gt_box(v, 10), float)
    assert np.allclose(fake.calls[0], [wide])
    assert np.allclose(fake.calls[1], [0.5 * np.array(wide) + 0.5 * seed_box])


def test_neighbour_box_keeps_the_seed_margins():
    m = np.zeros((40, 40), bool)
    m[10:20, 10:30] = True  # box (10, 10, 30, 20)
    s = PropagateSettings(box_pad=0)
    out = neighbour_prompt(m, None, s, margins=np.array([0.1, 0.5, 0.0, 0.0]))
    assert np.allclose(out["boxes"], [[8, 5, 30, 20]])
    assert "mask_input" not in out and "points" not in out
    s = PropagateSettings(box_pad=3, interior_point=True, use_logits=True)
    out = neighbour_prompt(m, np.ones((256, 256)), s, margins=np.zeros(4))
    assert np.allclose(out["boxes"], [[7, 7, 33, 23]])
    assert out["points"].shape == (1, 2) and m[int(out["points"][0, 1]), int(out["points"][0, 0])]


def test_locked_slices_are_never_changed():
    v = ball_volume()
    r = propagate(
        FakePredictor(),
        v,
        10,
        box=gt_box(v, 10),
        locked={12, 6},
        settings=PropagateSettings(min_pixels=3, prefetch=0),
    )
    assert r.stops == {"up": "edited at 12", "down": "edited at 6"}
    assert r.indices == [7, 8, 9, 10, 11]


def test_majority_routing_gives_one_task_to_the_volume():
    v = ball_volume()
    v[11:13, 0, 0] = 2  # two slices route to 'b', the rest to 'a'
    s = PropagateSettings(min_pixels=3, min_shrink=0.05, prefetch=0)
    per_slice = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=s)
    assert per_slice.tasks["b"] == 2
    maj = propagate(
        FakePredictor(),
        v,
        10,
        box=gt_box(v, 10),
        settings=PropagateSettings(min_pixels=3, min_shrink=0.05, prefetch=0, routing="majority"),
    )
    assert set(maj.tasks) == {"a"} and maj.routing == "majority"
    assert np.array_equal(maj.masks, per_slice.masks)


def test_prefetch_embeds_ahead_in_a_background_thread():
    v = ball_volume()
    fake = FakePredictor()
    r = propagate(
        fake,
        v,
        10,
        box=gt_box(v, 10),
        settings=PropagateSettings(min_pixels=3, min_shrink=0.05, prefetch=2),
    )
    assert any(t.startswith("casam-prefetch") for t in fake.embed_threads)
    assert len(r.slices) > 10
    assert not [t for t in threading.enumerate() if t.name.startswith("casam-prefetch")]


def test_cancel_between_slices_stops_and_leaves_no_thread():
    v = ball_volume()
    events = []
    gen = iter_propagate(FakePredictor(), v, 10, box=gt_box(v, 10))
    with pytest.raises(Cancelled):
        drive(gen, events.append, should_stop=lambda: len(events) >= 3)
    assert len(events) == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("casam-prefetch")]


def test_seed_from_a_hand_drawn_mask():
    v = ball_volume()
    seed = v[10] >= 100
    seed[0, :2] = False
    r = propagate(
        FakePredictor(), v, 10, mask=seed, settings=PropagateSettings(min_pixels=3, prefetch=0)
    )
    assert np.array_equal(r.masks[10], seed) and np.isnan(r.slices[r.indices.index(10)].score)
    assert r.masks[11].any() and r.masks[9].any()


@pytest.mark.parametrize(
    "volume, k, words",
    [
        (np.zeros((32, 32)), 0, "2-D"),
        (np.zeros((32, 32, 3), np.uint8), 0, "2-D"),
        (np.zeros((5, 32, 32)), 5, "out of range"),
        (np.zeros((5, 32, 32)), -1, "out of range"),
    ],
)
def test_bad_volume_or_slice_is_one_clear_error(volume, k, words):
    with pytest.raises(InputError, match=words):
        check_volume(volume, k)


def test_no_prompt_and_empty_seed_are_refused():
    v = ball_volume()
    with pytest.raises(InputError, match="give a box"):
        propagate(FakePredictor(), v, 10)
    with pytest.raises(InputError, match="empty mask"):
        propagate(FakePredictor(), v, 0, box=[30, 30, 40, 40])


def test_the_default_settings_stop_where_the_tissue_changes():
    """Past an organ's end SAM keeps finding something in the box: the default stops on the
    intensity shift even though size and score would let it run on."""
    v = ball_volume(radius=9.0)
    v[14][v[14] >= 100] = 600  # slice 14: the same place, another tissue
    r = propagate(FakePredictor(), v, 10, box=gt_box(v, 10), settings=PropagateSettings(prefetch=0))
    assert r.stops["up"] == "appearance at 14" and max(r.indices) == 13
    assert r.stops["down"].startswith("empty at")
