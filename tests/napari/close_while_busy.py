"""Open napari with the dock and the CT sample, start one kind of job, close the window.

    python tests/napari/close_while_busy.py load|embed|prepare|learn|dock

("dock" removes the dock while the model loads, then closes the viewer.)

Run by ``test_closing.py`` in a subprocess (the crash it guards against aborts the process).
Prints "closed while <kind> was running" once the window was closed with the job running.
"""

from __future__ import annotations

import sys
import time


def main(kind: str) -> int:
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(show=True)
    _, dock = viewer.window.add_plugin_dock_widget("napari-casam", "CA-SAM")
    viewer.open_sample("napari-casam", "ct_spleen")
    state = {"t0": time.time(), "started": kind in ("load", "dock")}

    def running() -> bool:
        if kind == "learn":
            return dock.learn.running
        return dock.jobs.busy

    def start() -> None:
        image = dock.image_layer
        if kind == "embed":
            dock.auto_route.setChecked(True)
            viewer.dims.set_current_step(0, 3)
            dock.update_route()
        elif kind == "prepare":
            dock.prepare_volume()
        elif kind == "learn":
            gt = next(ly for ly in viewer.layers if "ground truth" in ly.name)
            labels = np.zeros_like(gt.data)
            labels[::2] = gt.data[::2]
            viewer.add_labels(labels, name="corrected")
            viewer.layers.selection.active = image
            dock.learn.refresh_labels()
            dock.learn.labels.setCurrentText("corrected")
            dock.learn.settings_overrides = {"epochs": 200, "vae_steps": 200}
            assert dock.learn.learn(name="CT spleen")
        state["started"] = True

    def step() -> None:
        if not state["started"]:
            if not dock.busy:
                start()
            QTimer.singleShot(100, step)
            return
        if running():
            print(f"closed while {kind} was running", flush=True)
            if kind == "dock":
                viewer.window.remove_dock_widget(dock)
            viewer.close()
            return
        if time.time() - state["t0"] > 600:
            print("the job never ran", flush=True)
            viewer.window._qt_window.close()
            return
        QTimer.singleShot(50, step)

    QTimer.singleShot(200 if kind == "load" else 100, step)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
