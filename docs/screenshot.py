"""Make docs/screenshot.png: the CA-SAM dock in use on the real CT sample.

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/screenshot.py

What it does, as a user would: open napari with the dock, load the plugin's CT sample, teach
the task "CT spleen" from the ground-truth masks of every other slice (as if they were
corrected masks), then go to a slice the task never saw, draw a box around the spleen and let
the dock segment it with the routed task. Everything runs in a throw-away
``CASAM_HOME`` so the user's own library is untouched. Takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_API", "pyqt6")  # the napari extra's binding, where PyQt5 lingers too

HERE = Path(__file__).resolve().parent
TRAIN = list(range(0, 29, 2))  # "corrected" slices the task learns from
SHOW = 23  # a slice it never saw


def wait(app, cond, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")


def throwaway_home(prefix: str) -> Path:
    """A temporary folder holding this run's ``CASAM_HOME`` and napari settings, so the user's
    own library and settings are untouched."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["CASAM_HOME"] = str(tmp / "casam")
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari-settings.yaml")
    return tmp


def open_with_dock():
    """A 1400 x 940 napari window with the CA-SAM dock and no notification toasts."""
    import napari
    from napari.settings import get_settings
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    get_settings().application.gui_notification_level = "none"  # no toasts over the image
    viewer = napari.Viewer(title="napari — CA-SAM")
    window = viewer.window._qt_window
    window.resize(1400, 940)
    dock_widget, dock = viewer.window.add_plugin_dock_widget("napari-casam", "CA-SAM")
    window.resizeDocks([dock_widget], [470], Qt.Horizontal)
    return viewer, dock, QApplication.instance()


def save_window(viewer, out: Path) -> None:
    """Close any toast, let the window settle, save the whole window as PNG, close it."""
    import imageio.v3 as iio
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for _ in range(20):
        QApplication.instance().processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(out, shot)
    print(f"wrote {out} {shot.shape}")
    viewer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "screenshot.png")
    ap.add_argument("--epochs", type=int, default=None, help="default: the dock's (LearnSettings)")
    args = ap.parse_args()
    throwaway_home("casam-screenshot-")

    viewer, dock, app = open_with_dock()
    viewer.open_sample("napari-casam", "ct_spleen")
    wait(app, lambda: dock.image_layer is not None and not dock.busy, 600, "the model")
    image = viewer.layers["CT abdomen"]
    gt = next(ly for ly in viewer.layers if "ground truth" in ly.name)

    # 1. teach the task from "corrected" masks of the upper slices
    corrected = np.zeros_like(gt.data)
    corrected[TRAIN] = gt.data[TRAIN]
    viewer.add_labels(corrected, name="corrected masks", visible=False)
    viewer.layers.selection.active = image
    wait(app, lambda: not dock.busy, 60, "the dock")
    dock.learn.refresh_labels()
    dock.learn.labels.setCurrentText("corrected masks")
    assert dock.learn.labels_layer().name == "corrected masks"
    if args.epochs:
        dock.learn.epochs.setValue(args.epochs)
    t0 = time.time()
    if not dock.learn.learn(name="CT spleen"):
        print(dock.learn.last_error, file=sys.stderr)
        return 1
    wait(app, lambda: not dock.learn.running and not dock.busy, 3600, "training")
    print(f"learned in {time.time() - t0:.0f} s: {dock.learn.result.text()}")

    # 2. a slice the task never saw: draw a box around the spleen
    viewer.layers.selection.active = image
    viewer.dims.set_current_step(0, SHOW)
    wait(app, lambda: not dock.busy, 600, "routing")
    boxes = dock.prompts_layer()
    m = gt.data[SHOW] > 0
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    r0, r1, c0, c1 = rows[0] - 2, rows[-1] + 2, cols[0] - 2, cols[-1] + 2
    boxes.add_rectangles(
        np.array([[SHOW, r0, c0], [SHOW, r0, c1], [SHOW, r1, c1], [SHOW, r1, c0]], float)
    )
    wait(app, lambda: not dock.busy, 600, "the mask")
    print("segmented:", dock.status.text(), "| route:", dock.card.text)

    # 3. a clean view: image, mask, box; the dock shows the routed task
    for layer in viewer.layers:
        if layer not in (image, boxes, dock.masks_layer()):
            layer.visible = False
    dock.masks_layer().opacity = 0.6
    image.interpolation2d = "cubic"
    viewer.layers.selection.active = boxes
    boxes.mode = "add_rectangle"
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom *= 1.1
    save_window(viewer, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
