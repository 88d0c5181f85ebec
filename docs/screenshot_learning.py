"""Make docs/screenshot-learning.png: the dock at 1280 x 1000 while a task is being learned,
with two tasks in the library table (checks that nothing in the dock is clipped).

    xvfb-run -a -s "-screen 0 1280x1024x24" python docs/screenshot_learning.py

Two tiny tasks are learned first with the engine (real CT and MR slices of tests/data), in a
throw-away ``CASAM_HOME``; then the dock opens the CT sample and starts learning a third task
from its ground truth, and the window is captured during the Alignment Layer's epochs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from screenshot import throwaway_home, wait  # docs/screenshot.py (it also sets QT_API)

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"
TINY = {"epochs": 1, "vae_steps": 200}


def learn_two_tasks(library: Path) -> None:
    import tifffile

    from casam import LearnSettings, Predictor, TaskLibrary, learn_task

    lib = TaskLibrary(library)
    p = Predictor(library=lib)
    for name, folder in (("CT spleen", "ct_spleen"), ("MR brain tumour", "mr_brain_tumour")):
        images = tifffile.imread(DATA / folder / "images.tif")
        masks = tifffile.imread(DATA / folder / "masks.tif")
        keep = [k for k in range(len(images)) if masks[k].any()][:12]
        learn_task(
            [images[k] for k in keep],
            [masks[k] for k in keep],
            name=name,
            library=lib,
            predictor=p,
            settings=LearnSettings(**TINY),
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "screenshot-learning.png")
    args = ap.parse_args()
    throwaway_home("casam-screenshot-")
    from casam.config import default_library_dir

    learn_two_tasks(default_library_dir())

    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    get_settings().application.gui_notification_level = "none"
    viewer = napari.Viewer(title="napari — CA-SAM")
    window = viewer.window._qt_window
    window.resize(1280, 1000)
    app = QApplication.instance()
    _, dock = viewer.window.add_plugin_dock_widget("napari-casam", "CA-SAM")
    viewer.open_sample("napari-casam", "ct_spleen")
    wait(app, lambda: dock.image_layer is not None and not dock.busy, 600, "the model")
    image = viewer.layers["CT abdomen"]
    gt = next(ly for ly in viewer.layers if "ground truth" in ly.name)
    corrected = np.zeros_like(gt.data)
    corrected[::2] = gt.data[::2]
    viewer.add_labels(corrected, name="CT corrected", visible=False)
    viewer.layers.selection.active = image
    wait(app, lambda: not dock.busy, 120, "the dock")
    dock.learn.refresh_labels()
    dock.learn.labels.setCurrentText("CT corrected")
    dock.learn.epochs.setValue(24)
    dock.learn.settings_overrides = {"vae_steps": 200}
    assert dock.learn.learn(name="CT spleen (more slices)"), dock.learn.last_error
    wait(app, lambda: "epoch 2 of" in dock.learn.progress_text.text(), 1800, "epoch 2")
    from qtpy.QtWidgets import QScrollArea

    for area in dock.findChildren(QScrollArea):  # as a user scrolls down to the task table
        area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    import imageio.v3 as iio

    iio.imwrite(args.out, shot)
    print(f"wrote {args.out} {shot.shape}: {dock.learn.progress_text.text()}")
    print("table:", dock.library.names(), "| model:", dock.model.status.text())
    dock.learn.cancel()
    wait(app, lambda: not dock.learn.running, 600, "the cancel")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
