"""Layer converters as pure functions (no viewer, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_casam import _layers as L


def rect(r0, c0, r1, c1, *lead):
    """napari Shapes rectangle vertices (row, col order, leading slice coords first)."""
    corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)
    return np.concatenate(
        [np.tile(np.asarray(lead, dtype=float), (4, 1)).reshape(4, len(lead)), corners], 1
    )


def test_rectangle_to_box_2d_is_xyxy():
    index, box = L.rectangle_to_box(rect(10, 20, 40, 90))
    assert index == ()
    np.testing.assert_allclose(box, [20, 10, 90, 40])


def test_rectangle_to_box_3d_gives_slice_and_handles_any_vertex_order():
    v = rect(40, 90, 10, 20, 7)[::-1]
    index, box = L.rectangle_to_box(v, plane_shape=(100, 120))
    assert index == (7,)
    np.testing.assert_allclose(box, [20, 10, 90, 40])


def test_rectangle_to_box_rounds_slice_coordinate():
    index, _ = L.rectangle_to_box(rect(1, 1, 5, 5, 2.0000001, 3.9999))
    assert index == (2, 4)


def test_rectangle_to_box_clips_and_rejects_degenerate():
    _, box = L.rectangle_to_box(rect(-5, -10, 30, 500), plane_shape=(64, 100))
    np.testing.assert_allclose(box, [0, 0, 99, 30])
    _, outside = L.rectangle_to_box(rect(200, 200, 300, 300), plane_shape=(64, 100))
    assert outside is None
    _, thin = L.rectangle_to_box(rect(10, 10, 10.5, 40), plane_shape=(64, 100))
    assert thin is None


def test_rectangle_to_box_rejects_bad_shape():
    with pytest.raises(ValueError):
        L.rectangle_to_box(np.zeros(4))


def test_mask_to_indices_full_dimensional_and_preserving():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True
    current = np.zeros((4, 5), np.uint16)
    current[1, 1] = 9
    ix = L.mask_to_indices(m, (3,), current)
    assert len(ix) == 3
    assert set(ix[0]) == {3}
    assert len(ix[1]) == 5  # 6 pixels minus the one already labelled
    assert (1, 1) not in set(zip(ix[1], ix[2], strict=True))
    assert len(L.mask_to_indices(m, (3,), current, preserve_existing=False)[1]) == 6
    vol = np.zeros((5, 4, 5), np.uint16)
    vol[L.mask_to_indices(m, (2,))] = 4
    assert vol[2].sum() == 4 * 6 and vol.sum() == 4 * 6


def test_annotated_indices_and_training_pairs_volume():
    img = np.arange(4 * 8 * 9, dtype=np.int16).reshape(4, 8, 9)
    lab = np.zeros((4, 8, 9), np.uint8)
    lab[1, 2:4, 2:4] = 1
    lab[3, 5, 5] = 2
    assert L.annotated_indices(lab, 1) == [(1,), (3,)]
    images, masks, idx = L.training_pairs(img, lab, rgb=False)
    assert idx == [(1,), (3,)]
    np.testing.assert_array_equal(images[0], img[1])
    np.testing.assert_array_equal(masks[1], lab[3])


def test_training_pairs_2d_rgb_and_empty():
    img = np.zeros((8, 9, 3), np.uint8)
    lab = np.zeros((8, 9), np.uint8)
    assert L.training_pairs(img, lab, rgb=True)[0] == []
    lab[1, 1] = 1
    images, masks, idx = L.training_pairs(img, lab, rgb=True)
    assert idx == [()] and images[0].shape == (8, 9, 3) and masks[0].shape == (8, 9)


def test_training_pairs_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        L.training_pairs(np.zeros((3, 8, 9)), np.zeros((3, 8, 8), np.uint8), rgb=False)


def test_interpolate_boxes_between_slices_both_directions():
    items = L.interpolate_boxes((2,), [0, 0, 10, 10], (6,), [4, 4, 30, 50])
    assert [ix for ix, _ in items] == [(3,), (4,), (5,)]
    np.testing.assert_allclose(items[1][1], [2, 2, 20, 30])
    back = L.interpolate_boxes((6,), [4, 4, 30, 50], (2,), [0, 0, 10, 10])
    assert [ix for ix, _ in back] == [(5,), (4,), (3,)]
    np.testing.assert_allclose(back[0][1], items[2][1])
    assert L.interpolate_boxes((2,), [0, 0, 1, 1], (3,), [0, 0, 1, 1]) == []


def test_interpolate_boxes_rejects_same_slice_or_2d():
    with pytest.raises(ValueError):
        L.interpolate_boxes((2,), [0, 0, 1, 1], (2,), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        L.interpolate_boxes((), [0, 0, 1, 1], (), [0, 0, 1, 1])
    with pytest.raises(ValueError):
        L.interpolate_boxes((1, 2), [0, 0, 1, 1], (3, 4), [0, 0, 1, 1])


def test_index_helpers():
    assert L.spatial_shape((5, 8, 9, 3), rgb=True) == (5, 8, 9)
    assert L.n_leading((5, 8, 9), rgb=False) == 1
    assert L.n_leading((8, 9, 3), rgb=True) == 0
    assert L.index_from_point([2.6, 4.0, 5.0], 1, (3, 8, 9)) == (2,)
    assert L.index_from_point([7.0, 4.0, 5.0], 1, (3, 8, 9)) == (2,)
    assert L.plane_indices((2, 2)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    vol = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(L.plane(vol, (1,)), vol[1])
    np.testing.assert_array_equal(L.plane(vol[0], ()), vol[0])


def test_next_label():
    assert L.next_label(np.zeros((3, 3), np.uint16)) == 1
    assert L.next_label(np.array([[0, 4], [2, 0]])) == 5
