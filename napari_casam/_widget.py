"""The CA-SAM dock: composes the views of ``napari_casam._qt`` over the Qt-free model.

The dock owns its state (a :class:`~napari_casam._model.DockModel` over a
:class:`~napari_casam._session.Session`); it binds napari's events (layers, dims, keys) to the
model and the model's events to the views. The view reads the model; the model never imports
Qt.
"""

from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from napari_casam import _prompts
from napari_casam._layers import Index, n_leading
from napari_casam._model import DockModel, LearnModel
from napari_casam._model.engine import EngineModel
from napari_casam._model.volume import VolumeTools
from napari_casam._prompts import ViewerLayers, is_user_image
from napari_casam._qt.close_guard import CloseGuard
from napari_casam._qt.common import scrolling_body, section
from napari_casam._qt.interactive_panel import InteractivePanel
from napari_casam._qt.learn_panel import LearnPanel
from napari_casam._qt.library_panel import LibraryPanel
from napari_casam._qt.model_panel import ModelPanel
from napari_casam._qt.segment_panel import SegmentPanel
from napari_casam._qt.volume_panel import VolumePanel
from napari_casam._session import Session, guard_triton
from napari_casam._settings import PluginSettings
from napari_casam._texts import TIPS

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

#: Shortcuts bound on the boxes layer; none is a default napari Shapes or viewer binding.
SHORTCUTS = {
    "Control-Z": "undo_segmentation",
    "Control-Shift-Z": "redo_segmentation",
    "Shift-I": "interpolate",
    "Shift-E": "prepare_volume",
}

ROUTE_DELAY_MS = 250
SHUTDOWN_WAIT_MS = 120_000


class CasamWidget(QWidget):
    """Dock widget of napari-casam (opened with ``napari -w napari-casam``)."""

    def __init__(self, viewer: napari.viewer.Viewer, settings_path: Path | None = None) -> None:
        super().__init__()
        guard_triton()
        self.viewer = viewer
        self._settings_path = settings_path
        self.settings = s = PluginSettings.load(settings_path)
        self.session = Session(s.backbone, s.checkpoint, s.device, s.library, s.disk_cache)
        self.layers = ViewerLayers(viewer)
        self.state = DockModel(self.session, self.layers)
        self.state.auto_route = s.auto_route
        self.jobs = self.state.jobs
        self.learn_model = LearnModel(self.session)
        self.engine = EngineModel(self.session, self.jobs, self.state.on_job_error)
        self._select_after_reload: str | None = None
        self.close_guard = CloseGuard(self, self.shutdown)
        self._opened: str | None = None
        self._uid = id(self)
        self._route_timer = QTimer(self)
        self._route_timer.setSingleShot(True)
        self._route_timer.timeout.connect(self.update_route)
        self._build()
        self._bind()
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layer_renamed)
        self.refresh_images()
        active = viewer.layers.selection.active
        start = active if is_user_image(active) else _prompts.image_of(viewer, active)
        if start is None:
            images = [ly for ly in viewer.layers if is_user_image(ly)]
            start = images[-1] if images else None
        if start is not None:
            self.set_image_layer(start)
        self.library.refresh()
        self.load_model()

    # ================================================================ construction ========
    def _build(self) -> None:
        from casam.config import default_library_dir

        layout = scrolling_body(self)
        self.segment = SegmentPanel(self.settings.auto_route)
        seg = self.segment
        self.card, self.override, self.auto_route = seg.card, seg.override, seg.auto_route
        self.image_combo, self.status = seg.image_combo, seg.status
        self.prepare_btn, self.interp_btn = seg.prepare_btn, seg.interp_btn
        self.job_bar, self.job_cancel = seg.jobs.bar, seg.jobs.cancel
        layout.addWidget(seg)
        self.volume = VolumePanel(lambda: self.image_layer, self.masks_layer)
        layout.addWidget(
            section("Clinical volume", TIPS["volume_box"], self.volume, expanded=False)
        )
        self.volume_tools = VolumeTools(self.state)
        self.volume_panel = InteractivePanel(
            self.viewer, self.volume_tools, lambda: self.image_layer
        )
        seg.layout().addRow(self.volume_panel)
        self.learn = LearnPanel(
            self.viewer, self.learn_model, lambda: self.image_layer, self.masks_layer
        )
        layout.addWidget(section("Learn a new task", TIPS["learn_box"], self.learn))
        self.library = LibraryPanel(self.session)
        layout.addWidget(section("Task library", TIPS["library_box"], self.library))
        self.model = ModelPanel(self.settings, str(default_library_dir()))
        layout.addWidget(
            section("Model and library folder", TIPS["model_box"], self.model, expanded=False)
        )
        layout.addStretch(1)
        self.setMinimumWidth(360)

    def _bind(self) -> None:
        st, seg, viewer = self.state, self.segment, self.viewer
        st.route_changed.connect(self.card.show_text)
        st.status_changed.connect(self.status.setText, check_nargs=False)
        st.job_changed.connect(seg.jobs.show_job)
        st.cancellable.connect(self.job_cancel.setEnabled, check_nargs=False)
        self.jobs.busy_changed.connect(lambda busy: None if busy else st.on_idle())
        seg.image_combo.currentTextChanged.connect(self._on_image_combo)
        seg.override.currentIndexChanged.connect(lambda _: st.set_override(seg.override_value))
        seg.auto_route.toggled.connect(self._on_auto_route)
        seg.prepare_btn.clicked.connect(lambda: self.prepare_volume())
        seg.interp_btn.clicked.connect(lambda: self.interpolate())
        self.job_cancel.clicked.connect(self.cancel_jobs)
        self.model.changed.connect(self._on_model_changed)
        self.library.changed.connect(self.reload_library)
        self.learn_model.learned.connect(self._on_learned)
        self.engine.status_changed.connect(self.model.status.setText, check_nargs=False)
        self.engine.devices_changed.connect(self.model.set_devices)
        self.engine.tasks_changed.connect(self._tasks_changed)
        self.engine.ready_changed.connect(self._on_engine_ready)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        viewer.dims.events.current_step.connect(self._schedule_route)

    # ================================================================ layers ==============
    def _layer_named(self, name: str) -> Any:
        return next((ly for ly in self.viewer.layers if ly.name == name), None)

    @property
    def image_layer(self) -> Image | None:
        """The image the dock works on (None when there is none)."""
        return self.state.image

    def masks_layer(self, image: Image | None = None) -> Labels | None:
        return self.layers.masks(image or self.image_layer)

    def prompts_layer(self, image: Image | None = None) -> Shapes | None:
        return self.layers.prompts(image or self.image_layer)

    def refresh_images(self) -> None:
        names = [ly.name for ly in self.viewer.layers if is_user_image(ly)]
        self.segment.set_images(names, self.image_layer.name if self.image_layer else "")

    def set_image_layer(self, image: Image | str) -> None:
        """Work on ``image``: link (or create) its boxes and masks layers, route its slice."""
        image = self._layer_named(image if isinstance(image, str) else image.name)
        if not is_user_image(image):
            raise ValueError(f"{image!r} is not an image layer")
        self.segment.show_image(image.name)
        if image.multiscale:
            self.state.bind(image)
            return
        if self.masks_layer(image) is None:
            _prompts.make_masks(self.viewer, image)
        if self.prompts_layer(image) is None:
            _prompts.make_prompts(self.viewer, image)
        prompts = self.prompts_layer(image)
        self._connect_prompts(prompts)
        self.viewer.layers.selection.active = prompts
        prompts.mode = "add_rectangle"
        self.state.bind(image)
        self.learn.refresh_labels()
        volume = n_leading(image.data.shape, image.rgb) > 0
        self.prepare_btn.setEnabled(volume)
        self.interp_btn.setEnabled(volume)
        self._schedule_route()

    def _connect_prompts(self, prompts: Shapes) -> None:
        if prompts.metadata.get("casam_dock") == self._uid:
            return
        prompts.metadata["casam_dock"] = self._uid
        prompts.events.data.connect(self._on_prompts_data)
        me = weakref.ref(self)
        for key, method in SHORTCUTS.items():

            def action(layer: Any, _m: str = method) -> None:
                w = me()
                if w is not None:
                    getattr(w, _m)()

            action.__doc__ = method.replace("_", " ")
            prompts.bind_key(key, action, overwrite=True)

    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._on_layer_renamed)
            if is_user_image(event.value):
                self._opened = _prompts.token(event.value)
        self.refresh_images()
        QTimer.singleShot(0, self._after_layers_changed)

    def _on_layer_renamed(self, event: Any = None) -> None:
        self.refresh_images()
        self.learn.refresh_labels()
        self.state.show_route()

    def _after_layers_changed(self) -> None:
        try:
            self.learn.refresh_labels()
        except RuntimeError:
            return
        opened, self._opened = self.layers.image(self._opened), None
        if opened is not None and not opened.multiscale:
            self.set_image_layer(opened)  # a new image: draw on it at once, and see all of it
            self.viewer.reset_view()
        elif self.image_layer is None:
            images = [ly for ly in self.viewer.layers if is_user_image(ly)]
            if images:
                self.set_image_layer(images[-1])
            else:
                self.state.bind(None)

    def _on_image_combo(self, name: str) -> None:
        current = self.image_layer
        if name and name in self.viewer.layers and (current is None or current.name != name):
            self.set_image_layer(name)

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        layer = self._layer_named(active.name) if active is not None else None
        if layer is None:
            return
        image = layer if is_user_image(layer) else _prompts.image_of(self.viewer, layer)
        if image is None or _prompts.token(image) == self.state.token:
            return
        if not is_user_image(layer):
            self.set_image_layer(image)
            return
        # selecting an image switches to it without stealing the selection
        self.state.bind(image)
        self.segment.show_image(image.name)
        if self.prompts_layer(image) is None:
            QTimer.singleShot(0, partial(self._link_later, self.state.token))
        self.learn.refresh_labels()
        self._schedule_route()

    def _link_later(self, tok: str) -> None:
        image = self.layers.image(tok)
        if image is None:
            return
        self.set_image_layer(image)  # the dock made its layers: the boxes layer is selected

    def current_index(self, image: Image | None = None) -> Index:
        """Plane index of ``image`` on the slice in view (``()`` for a 2-D image)."""
        return self.layers.current_index(image or self.image_layer)

    # ================================================================ segmentation ========
    def _on_prompts_data(self, event: Any) -> None:
        if str(getattr(event, "action", "")) == "added":
            self.segment_new_boxes(event.source)

    def segment_new_boxes(self, prompts: Shapes | None = None) -> int:
        """Segment every box of ``prompts`` not segmented yet; returns how many were queued."""
        prompts = prompts or self.prompts_layer()
        if prompts is None:
            return 0
        return self.state.segment_new_boxes(prompts, _prompts.image_of(self.viewer, prompts))

    @property
    def last_segmentation(self) -> Any:
        return self.state.last_segmentation

    @property
    def last_timing(self) -> dict[str, float]:
        return self.state.last_timing

    def undo_segmentation(self) -> bool:
        """Ctrl+Z on the boxes layer: undo the last edit of the masks layer (as Ctrl+Z there
        does); boxes whose mask this removed are removed too."""
        return self.state.undo()

    def redo_segmentation(self) -> None:
        self.state.redo()

    def prepare_volume(self) -> bool:
        """Embed every slice of the image in the background (Shift-E)."""
        return self.state.prepare_volume()

    def interpolate(self) -> bool:
        """Segment the slices between two boxes of one structure, as one undoable step."""
        return self.state.interpolate()

    def cancel_jobs(self) -> None:
        """Stop preparing or interpolating (at the next slice)."""
        self.state.cancel_jobs()

    # ================================================================ routing =============
    def _schedule_route(self, event: Any = None) -> None:
        self._route_timer.start(ROUTE_DELAY_MS)

    def update_route(self) -> None:
        """Route the slice in view (embedding it first when auto-routing is on)."""
        self.state.update_route(self.model.ready())

    @property
    def override_value(self) -> str:
        return self.segment.override_value

    def set_override(self, value: str) -> None:
        i = self.override.findData(value)
        if i < 0:
            raise ValueError(f"unknown choice {value!r}")
        self.override.setCurrentIndex(i)

    def _on_auto_route(self, on: bool) -> None:
        self.settings.auto_route = self.state.auto_route = bool(on)
        self.settings.save(self._settings_path)
        self.state.show_route()
        if on:
            self._schedule_route()

    # ================================================================ model / library =====
    def load_model(self) -> None:
        """Load the predictor in the background (no-op while a checkpoint is missing)."""
        self.engine.load(self.model.ready(), self.state.on_job_text)

    def reload_library(self) -> None:
        """Make the predictor re-read the library (after learn, rename, delete, import)."""
        self.engine.reload()

    def _on_model_changed(self) -> None:
        s, m = self.settings, self.model
        s.backbone, s.device, s.library = m.backbone_name, m.device_name, m.library_dir
        s.checkpoints, s.disk_cache = m.checkpoints, m.disk_cache.isChecked()
        s.save(self._settings_path)
        self.engine.configure(
            s.backbone, m.checkpoint_path, s.device, s.library, s.disk_cache, m.ready()
        )

    def _tasks_changed(self, names: list[str]) -> None:
        if not self.segment.fill_override(names):
            self.state.set_override(self.override_value)
        self.learn.set_task_names(names)

    def _on_engine_ready(self) -> None:
        self.library.refresh()
        if self._select_after_reload:
            self.library.select(self._select_after_reload)
            self._select_after_reload = None
        self.state.forget_route()
        self._schedule_route()

    def _on_learned(self, info: Any) -> None:
        self._select_after_reload = info.name
        self.reload_library()

    # ================================================================ lifecycle ===========
    @property
    def busy(self) -> bool:
        """True while any background work (jobs or training) is running or queued."""
        return self.jobs.busy or self.learn.running or self._route_timer.isActive()

    def close_jobs(self) -> None:
        self._route_timer.stop()
        self.state.cancel_jobs()
        self.jobs.clear()
        self.learn.cancel()

    def shutdown(self, wait_ms: int = SHUTDOWN_WAIT_MS) -> None:
        """The dock, the viewer or napari closes: cancel every job, wait for the running ones.

        Training stops at its next step (nothing saved); loading and embedding cannot be
        interrupted and finish. Waiting here, while Qt and the workers' signal objects still
        exist, is what keeps a worker from emitting into deleted objects (which aborts).
        """
        self._route_timer.stop()
        self.state.close()
        self.learn_model.close()
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(wait_ms)
