"""Property-based tests (hypothesis) of the box transforms and box validation (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
from casam_testing import one_line
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from casam.errors import InputError
from casam.preprocess import Geometry, check_boxes, mask_box

sides = st.integers(min_value=1, max_value=6000)
input_sizes = st.sampled_from([256, 1024])


def geometry_or_skip(h: int, w: int, s: int) -> Geometry:
    try:
        return Geometry(h, w, s)
    except InputError as e:
        one_line(e)
        assume(False)
        raise


@st.composite
def geometry_and_boxes(draw):
    h, w, s = draw(sides), draw(sides), draw(input_sizes)
    n = draw(st.integers(1, 5))
    xs = draw(st.lists(st.tuples(st.floats(0, w), st.floats(0, w)), min_size=n, max_size=n))
    ys = draw(st.lists(st.tuples(st.floats(0, h), st.floats(0, h)), min_size=n, max_size=n))
    boxes = np.array(
        [[min(x), min(y), max(x), max(y)] for x, y in zip(xs, ys, strict=True)], dtype=np.float64
    )
    return h, w, s, boxes


@settings(max_examples=300, deadline=None)
@given(geometry_and_boxes())
def test_box_transform_round_trips(case):
    h, w, s, boxes = case
    geo = geometry_or_skip(h, w, s)
    rh, rw = geo.resized
    assert max(rh, rw) == s and 1 <= min(rh, rw) <= s
    inp = geo.boxes_to_input(boxes)
    assert inp.dtype == np.float32 and inp.shape == boxes.shape
    # inside the resized image, hence inside the S x S input
    assert (inp[:, [0, 2]] >= 0).all() and (inp[:, [0, 2]] <= rw * (1 + 1e-6)).all()
    assert (inp[:, [1, 3]] >= 0).all() and (inp[:, [1, 3]] <= rh * (1 + 1e-6)).all()
    # order of coordinates is kept (a valid box stays valid)
    assert (inp[:, 2] >= inp[:, 0]).all() and (inp[:, 3] >= inp[:, 1]).all()
    back = geo.boxes_from_input(inp)
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=max(h, w) * 2e-6)


@settings(max_examples=100, deadline=None)
@given(sides, sides, input_sizes)
def test_image_corners_map_to_resized_corners(h, w, s):
    geo = geometry_or_skip(h, w, s)
    rh, rw = geo.resized
    np.testing.assert_allclose(geo.boxes_to_input([0, 0, w, h])[0], [0, 0, rw, rh], rtol=1e-6)


coords = st.floats(min_value=-1e5, max_value=1e5, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(coords, coords, coords, coords), min_size=1, max_size=4),
    st.integers(8, 4000),
    st.integers(8, 4000),
)
def test_check_boxes_refuses_or_clips_inside(boxes, h, w):
    b = np.array(boxes, dtype=np.float64)
    try:
        out = check_boxes(b, h, w)
    except InputError as e:
        msg = one_line(e)
        assert any(k in msg for k in ("inverted", "zero area", "outside"))
        bad = (
            (b[:, 2] < b[:, 0])
            | (b[:, 3] < b[:, 1])
            | (b[:, 2] - b[:, 0] < 1)
            | (b[:, 3] - b[:, 1] < 1)
        )
        cx = np.minimum(b[:, 2], w) - np.maximum(b[:, 0], 0)
        cy = np.minimum(b[:, 3], h) - np.maximum(b[:, 1], 0)
        assert (bad | (cx < 1) | (cy < 1)).any()
        return
    assert out.shape == b.shape
    assert (out[:, 0] >= 0).all() and (out[:, 1] >= 0).all()
    assert (out[:, 2] <= w).all() and (out[:, 3] <= h).all()
    assert (out[:, 2] - out[:, 0] >= 1).all() and (out[:, 3] - out[:, 1] >= 1).all()
    # clipping only shrinks a box, and a box already inside is unchanged
    assert (out[:, :2] >= b[:, :2]).all() and (out[:, 2:] <= b[:, 2:]).all()
    inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
    np.testing.assert_array_equal(out[inside], b[inside])
    np.testing.assert_array_equal(check_boxes(out, h, w), out)  # idempotent


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 1.0, 5.0]), min_size=4, max_size=4))
def test_non_finite_box_coordinates_are_refused(box):
    assume(not np.isfinite(box).all())
    with pytest.raises(InputError) as e:
        check_boxes(box, 64, 64)
    assert "NaN or infinite" in one_line(e.value)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_mask_box_is_tight_and_valid(h, w, data):
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    box = mask_box(m)
    assert box.tolist() == [x0, y0, x1, y1]
    if h >= 8 and w >= 8:
        np.testing.assert_array_equal(check_boxes(box, h, w)[0], box)
