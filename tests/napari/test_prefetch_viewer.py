"""Prefetching in a real viewer (Xvfb): after looking at a slice, the next slice's first box
needs no encoder call (real backbone, real CT spleen, a cold embedding cache)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

SLICE = 12


def count_encoder(monkeypatch, backbone) -> list[int]:
    """Images through the backbone's encoder from now on (``encode_inputs``: every embedding,
    single or batched, goes through it)."""
    seen = [0]
    encode_inputs = backbone.encode_inputs

    def batch(x):
        seen[0] += int(x.shape[0])
        return encode_inputs(x)

    monkeypatch.setattr(backbone, "encode_inputs", batch)
    return seen


def test_the_next_slice_is_embedded_before_its_first_box(
    make_napari_viewer, open_dock, ct_spleen, h, wait_idle, qtbot, tmp_path, monkeypatch
):
    monkeypatch.setenv("CASAM_CACHE", str(tmp_path / "cold"))  # nothing embedded yet
    images, gt = ct_spleen
    viewer = make_napari_viewer()
    viewer.add_image(images, name="CT", contrast_limits=(-160, 240))
    viewer.dims.set_current_step(0, SLICE)
    w = open_dock(viewer)
    prefetch = w.state.prefetch
    qtbot.waitUntil(lambda: not prefetch.busy and not w.busy, timeout=300_000)
    assert w.session.predictor.is_cached(images[SLICE])  # routed, so embedded
    assert set(prefetch.embedded) == {(SLICE + 1,), (SLICE - 1,), (SLICE + 2,), (SLICE - 2,)}
    assert not w.session.predictor.is_cached(images[SLICE + 3])  # a small window only

    encoded = count_encoder(monkeypatch, w.session.predictor.backbone)
    before = len(prefetch.embedded)
    viewer.dims.set_current_step(0, SLICE + 1)
    w.prompts_layer().add_rectangles([h.bbox_rect(gt[SLICE + 1], (SLICE + 1,))])
    wait_idle(w)
    lab = w.masks_layer().data
    assert h.iou(lab[SLICE + 1] == 1, gt[SLICE + 1]) > 0.5
    # looking at SLICE + 1 re-targets the window: SLICE + 3, its one new slice, is embedded in
    # the background. On a fast CPU that can run before the box's job is seen to end, so the
    # encoder calls are counted once all is done: exactly that one, none for the box.
    qtbot.waitUntil(
        lambda: len(prefetch.embedded) > before and not prefetch.busy and not w.busy,
        timeout=300_000,
    )
    assert prefetch.embedded[before:] == [(SLICE + 3,)]
    assert encoded[0] == 1  # the prefetch of SLICE + 3: the box used SLICE + 1's prefetched one
