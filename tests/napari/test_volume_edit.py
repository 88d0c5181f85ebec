"""Labels edits by propagation and clicks (pure functions, no viewer)."""

import numpy as np

from napari_casam._volume_edit import click_to_pixel, propagation_edit, slice_edit


def apply(labels, paint, erase, value):
    out = labels.copy()
    out[paint] = value
    out[erase] = 0
    return out


def test_propagation_never_overwrites_other_labels_nor_locked_slices():
    labels = np.zeros((4, 6, 6), np.uint16)
    labels[:, 0:2, 0:2] = 7  # another object
    labels[1, 4:6, 4:6] = 3  # object 3 on slice 1, edited by hand
    labels[2, 5, 5] = 3  # a stale pixel of object 3 on slice 2
    masks = np.zeros((4, 6, 6), bool)
    masks[:, 1:4, 1:4] = True
    paint, erase = propagation_edit(labels, masks, 3, visited=[0, 1, 2], locked=[1])
    out = apply(labels, paint, erase, 3)
    assert (out[:, 0:2, 0:2] == 7).all()  # the other object kept its pixels
    assert np.array_equal(out[1], labels[1])  # the hand-edited slice is untouched
    assert not out[3].any() or (out[3] == labels[3]).all()  # not visited
    assert out[2, 5, 5] == 0 and (out[2][1:4, 1:4][labels[2][1:4, 1:4] == 0] == 3).all()
    assert (out[0][masks[0] & (labels[0] == 0)] == 3).all()


def test_propagation_indices_carry_the_leading_axes():
    labels = np.zeros((3, 4, 4), np.uint8)
    masks = np.zeros((3, 4, 4), bool)
    masks[1, 2, 3] = True
    paint, _ = propagation_edit(labels, masks, 1, visited=[1], lead=(5,))
    assert [int(a[0]) for a in paint] == [5, 1, 2, 3]


def test_slice_edit_replaces_the_object_on_one_plane_only():
    plane = np.zeros((5, 5), np.uint8)
    plane[0, 0] = 9
    plane[4, :] = 2
    mask = np.zeros((5, 5), bool)
    mask[0:2, 0:2] = True
    paint, erase = slice_edit(plane, mask, 2, lead=(3,))
    assert all(int(v) == 3 for v in paint[0])
    out = np.zeros((4, 5, 5), np.uint8)
    out[3] = plane
    out[paint], out[erase] = 2, 0
    assert out[3, 0, 0] == 9 and (out[3, 4] == 0).all() and out[3, 1, 1] == 2


def test_click_coordinates_become_plane_and_xy():
    assert click_to_pixel([4.2, 10.0, 20.0], 1) == ((4,), 20.0, 10.0)
    assert click_to_pixel([10.0, 20.0], 0) == ((), 20.0, 10.0)
