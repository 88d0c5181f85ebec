"""Interactive 3-D in a real viewer (Xvfb): a box, Segment through volume, a negative click,
undo; the real backbone on the repository's real CT spleen (every 3rd slice)."""

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def spleen_viewer(make_napari_viewer, ct_spleen):
    images, masks = ct_spleen
    viewer = make_napari_viewer()
    viewer.add_image(images[2:29:3], name="CT", contrast_limits=(-160, 240))
    return viewer, masks[2:29:3].astype(bool)


def test_box_propagate_negative_click_undo(spleen_viewer, open_dock, h, wait_idle):
    viewer, gt = spleen_viewer
    k = int(np.argmax(gt.sum((1, 2))))
    viewer.dims.set_current_step(0, k)
    w = open_dock(viewer)
    w.prompts_layer().add_rectangles([h.bbox_rect(gt[k], (k,))])
    wait_idle(w)
    masks = w.masks_layer()
    assert (masks.data[k] == 1).any() and not masks.data[k - 1].any()
    masks.selected_label = 1
    assert w.volume_tools.propagate()
    wait_idle(w)
    lab = masks.data.copy()
    assert sum(lab[j].any() for j in range(len(gt))) >= 7
    dice = 2 * ((lab == 1) & gt).sum() / ((lab == 1).sum() + gt.sum())
    assert dice > 0.7, dice
    assert "one undo step" in w.status.text()
    # a negative click inside the object, on the slice in view
    pts = w.volume_panel.clicks_layer()
    assert pts.mode == "add" and pts.name == "CT clicks"
    w.volume_panel.negative.setChecked(True)
    ys, xs = np.nonzero(lab[k] == 1)
    y, x = int(np.median(ys)), int(np.median(xs))
    pts.add([[k, y, x]])
    wait_idle(w)
    after = masks.data.copy()
    assert not np.array_equal(after[k], lab[k])  # the click changed the mask on slice k
    assert all(np.array_equal(after[j], lab[j]) for j in range(len(gt)) if j != k)
    assert w.volume_tools.edited == {1: {k}}
    assert w.volume_panel.undo_click()
    assert np.array_equal(masks.data, lab) and len(pts.data) == 0
    assert w.volume_tools.edited.get(1, set()) == set()
    # one undo step removes the whole propagation (the box's own mask stays)
    masks.undo()
    assert not any(masks.data[j].any() for j in range(len(gt)) if j != k)


def test_propagate_needs_a_volume_and_a_prompt(make_napari_viewer, open_dock, notes, ct_spleen):
    viewer = make_napari_viewer()
    viewer.add_image(ct_spleen[0][3], name="slice")
    w = open_dock(viewer)
    assert not w.volume_tools.propagate()
    assert any("3-D image" in n for n in notes)
    viewer.add_image(ct_spleen[0][:4], name="vol")
    w.set_image_layer("vol")
    assert not w.volume_tools.propagate()
    assert any("Draw a box" in n for n in notes)
