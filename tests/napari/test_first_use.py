"""What a new user does first, with real mouse events: open the sample, drag a box, get a label."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def canvas_point(viewer, canvas, world_yx):
    """Canvas pixel (x, y) of a world point (row, col) of the plane in view (2-D display)."""
    from qtpy.QtCore import QPoint

    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    w, h = canvas.width(), canvas.height()
    y, x = world_yx
    return QPoint(round(w / 2 + (x - cx) * zoom), round(h / 2 + (y - cy) * zoom))


def drag(qtbot, widget, a, b, steps: int = 8):
    """Press at ``a``, move with the left button held, release at ``b`` (real Qt events)."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    qtbot.mouseMove(widget, a)
    qtbot.mousePress(widget, Qt.LeftButton, pos=a)
    for k in range(1, steps + 1):
        p = a + (b - a) * (k / steps)
        local = QPointF(p)
        event = QMouseEvent(
            QEvent.MouseMove,
            local,
            QPointF(widget.mapToGlobal(p)),
            Qt.NoButton,
            Qt.LeftButton,
            Qt.NoModifier,
        )
        QApplication.sendEvent(widget, event)
        qtbot.wait(10)
    qtbot.mouseRelease(widget, Qt.LeftButton, pos=b)


def test_open_the_sample_and_drag_a_box_with_the_mouse(
    make_napari_viewer, open_dock, qtbot, wait_idle, h
):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 1000)
    w = open_dock(viewer)
    viewer.open_sample("napari-casam", "ct_spleen")
    wait_idle(w)
    boxes = w.prompts_layer()
    assert viewer.layers.selection.active is boxes, viewer.layers.selection.active
    assert boxes.mode == "add_rectangle"
    # the view fits the image (no zoomed-in start)
    image = w.image_layer
    gt = next(ly for ly in viewer.layers if "ground truth" in ly.name).data
    k = int(np.argmax(gt.reshape(len(gt), -1).sum(1)))
    viewer.dims.set_current_step(0, k)
    wait_idle(w)
    canvas = viewer.window._qt_viewer.canvas.native
    h_img, w_img = image.data.shape[-2:]
    corner0 = canvas_point(viewer, canvas, (0, 0))
    corner1 = canvas_point(viewer, canvas, (h_img - 1, w_img - 1))
    assert canvas.rect().contains(corner0) and canvas.rect().contains(corner1)
    rows, cols = np.flatnonzero(gt[k].any(1)), np.flatnonzero(gt[k].any(0))
    a = canvas_point(viewer, canvas, (rows[0] - 2, cols[0] - 2))
    b = canvas_point(viewer, canvas, (rows[-1] + 2, cols[-1] + 2))
    drag(qtbot, canvas, a, b)
    qtbot.waitUntil(lambda: len(boxes.data) == 1, timeout=10_000)
    wait_idle(w)
    lab = w.masks_layer().data
    assert lab[k].any() and not np.delete(lab, k, axis=0).any()
    assert h.iou(lab[k] > 0, gt[k] > 0) > 0.5
