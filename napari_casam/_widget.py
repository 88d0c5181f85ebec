"""The CA-SAM dock: draw boxes, see the routed task, correct, learn, manage tasks.

The widget owns its state (a :class:`~napari_casam._session.Session` with the predictor, a
:class:`~napari_casam._workers.JobQueue`); panels are separate widgets:
:class:`~napari_casam._model_panel.ModelPanel`, :class:`~napari_casam._learn_panel.LearnPanel`,
:class:`~napari_casam._library_panel.LibraryPanel` and the routing card.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_casam import _prompts
from napari_casam._layers import (
    Index,
    index_from_point,
    interpolate_boxes,
    mask_to_indices,
    n_leading,
    next_label,
    plane,
    plane_indices,
    rectangle_to_box,
    spatial_shape,
)
from napari_casam._learn_panel import LearnPanel
from napari_casam._library_panel import LibraryPanel
from napari_casam._model_panel import ModelPanel
from napari_casam._routing import AUTO, SAM, RouteText, RoutingCard, describe_route
from napari_casam._session import BACKBONE_TITLES, Routed, Segmented, Session, guard_triton
from napari_casam._settings import PluginSettings
from napari_casam._workers import Job, JobQueue

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

log = logging.getLogger(__name__)

#: Shortcuts bound on the boxes layer; none is a default napari Shapes or viewer binding.
SHORTCUTS = {
    "Control-Z": "undo_segmentation",
    "Control-Shift-Z": "redo_segmentation",
    "Shift-I": "interpolate",
    "Shift-E": "prepare_volume",
}

ROUTE_DELAY_MS = 250


def _notify(kind: str, msg: str) -> None:
    from napari.utils.notifications import show_error, show_info, show_warning

    {"info": show_info, "warning": show_warning, "error": show_error}[kind](msg)


class CasamWidget(QWidget):
    """Dock widget of napari-casam (opened with ``napari -w napari-casam``).

    napari hands plugin widgets a public-only proxy of the viewer, whose attributes are new
    proxy objects on every access; so layers are remembered by a token in their metadata and
    looked up again by iterating ``viewer.layers`` (which yields the layers themselves).
    """

    def __init__(self, viewer: napari.viewer.Viewer, settings_path: Path | None = None) -> None:
        super().__init__()
        guard_triton()
        self.viewer = viewer
        self._settings_path = settings_path
        self.settings = PluginSettings.load(settings_path)
        self.session = Session(
            self.settings.backbone,
            self.settings.checkpoint,
            self.settings.device,
            self.settings.library,
            self.settings.disk_cache,
        )
        self.jobs = JobQueue(self)
        self.route: Any = None
        self.last_segmentation: Segmented | None = None
        self.last_timing: dict[str, float] = {}
        self._image_token: str | None = None
        self._uid = uuid.uuid4().hex
        self._cancel = threading.Event()
        self._route_timer = QTimer(self)
        self._route_timer.setSingleShot(True)
        self._route_timer.timeout.connect(self.update_route)

        self._build()
        self.jobs.busy_changed.connect(self._on_busy)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        viewer.dims.events.current_step.connect(self._schedule_route)

        for layer in viewer.layers:
            layer.events.name.connect(self._on_layer_renamed)
        self.refresh_images()
        active = viewer.layers.selection.active
        start = active if self._is_user_image(active) else _prompts.image_of(viewer, active)
        if start is None:
            images = [ly for ly in viewer.layers if self._is_user_image(ly)]
            start = images[-1] if images else None
        if start is not None:
            self.set_image_layer(start)
        self.library.refresh()
        self.load_model()

    # ================================================================ construction ========
    def _build(self) -> None:
        from casam.config import default_library_dir

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setFrameShape(QScrollArea.NoFrame)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(6, 6, 6, 6)
        scroll.setWidget(body)
        outer.addWidget(scroll)

        # ---- segment ----
        seg = QGroupBox("Segment with boxes")
        form = QFormLayout(seg)
        self.image_combo = QComboBox()
        self.image_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.image_combo.setMinimumContentsLength(8)
        self.image_combo.setToolTip(
            "Image to segment. The dock adds a “boxes” Shapes layer (draw rectangles on it) "
            "and a “masks” Labels layer (results; correct them with napari's label tools)."
        )
        form.addRow("Image", self.image_combo)
        hint = QLabel(
            "Draw a rectangle around a structure on the <b>boxes</b> layer: it is segmented "
            "at once on the slice in view. Ctrl+Z on the boxes layer undoes it."
        )
        hint.setWordWrap(True)
        hint.setToolTip(
            "Shortcuts on the boxes layer: R rectangle mode (napari), Ctrl+Z undo / "
            "Ctrl+Shift+Z redo the last segmentation, Shift+I interpolate between two boxes, "
            "Shift+E prepare the volume."
        )
        form.addRow(hint)
        self.card = RoutingCard()
        form.addRow(self.card)
        self.override = QComboBox()
        self.override.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.override.setMinimumContentsLength(8)
        self.override.setToolTip(
            "Automatic: the router picks the task (or plain SAM) per slice. Or force plain "
            "SAM, or one task, for every box."
        )
        self._fill_override([])
        form.addRow("Use", self.override)
        self.auto_route = QCheckBox("Route the slice in view")
        self.auto_route.setChecked(self.settings.auto_route)
        self.auto_route.setToolTip(
            "Compute the embedding and the routing of the slice you stop on in the background, "
            "so the card is always up to date and the next box answers at once."
        )
        form.addRow(self.auto_route)
        row = QHBoxLayout()
        self.prepare_btn = QPushButton("Prepare volume")
        self.prepare_btn.setToolTip(
            "Compute the embeddings of every slice now (Shift+E), so each box later answers "
            "instantly. Cancel stops it; what was computed stays cached."
        )
        self.interp_btn = QPushButton("Interpolate")
        self.interp_btn.setToolTip(
            "Segment every slice between two boxes of the same structure drawn on two slices "
            "(the two selected boxes, else the last two), as one undoable step (Shift+I)."
        )
        row.addWidget(self.prepare_btn)
        row.addWidget(self.interp_btn)
        form.addRow(row)
        prow = QHBoxLayout()
        self.job_bar = QProgressBar()
        self.job_bar.setTextVisible(True)
        self.job_bar.setRange(0, 1)
        self.job_bar.setValue(0)
        self.job_bar.setFormat("Idle")
        self.job_bar.setToolTip("Background work: model loading, embeddings, segmentation.")
        self.job_cancel = QPushButton("Cancel")
        self.job_cancel.setToolTip("Stop preparing the volume or interpolating.")
        self.job_cancel.setEnabled(False)
        prow.addWidget(self.job_bar, 1)
        prow.addWidget(self.job_cancel)
        form.addRow(prow)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setToolTip("Outcome and timing of the last segmentation.")
        form.addRow(self.status)
        layout.addWidget(seg)

        # ---- learn ----
        self.learn = LearnPanel(
            self.viewer, self.session, lambda: self.image_layer, self.masks_layer
        )
        learn_box = QCollapsible("Learn a new task")
        learn_box.setToolTip("Teach CA-SAM a new kind of image from your corrected masks.")
        learn_box.toggleButton().setToolTip(
            "Teach CA-SAM a new kind of image from your corrected masks."
        )
        learn_box.addWidget(self.learn)
        learn_box.expand(animate=False)
        layout.addWidget(learn_box)

        # ---- library ----
        self.library = LibraryPanel(self.session)
        lib_box = QCollapsible("Task library")
        lib_box.setToolTip("Tasks learned with the active backbone.")
        lib_box.toggleButton().setToolTip("Tasks learned with the active backbone.")
        lib_box.addWidget(self.library)
        lib_box.expand(animate=False)
        layout.addWidget(lib_box)

        # ---- model ----
        self.model = ModelPanel(self.settings, str(default_library_dir()))
        model_box = QCollapsible("Model and library folder")
        model_box.setToolTip("Backbone, device and task library folder (remembered).")
        model_box.toggleButton().setToolTip(
            "Backbone, device and task library folder (remembered)."
        )
        model_box.addWidget(self.model)
        layout.addWidget(model_box)
        layout.addStretch(1)

        self.image_combo.currentTextChanged.connect(self._on_image_combo)
        self.override.currentIndexChanged.connect(self._on_override)
        self.auto_route.toggled.connect(self._on_auto_route)
        self.prepare_btn.clicked.connect(lambda: self.prepare_volume())
        self.interp_btn.clicked.connect(lambda: self.interpolate())
        self.job_cancel.clicked.connect(self.cancel_jobs)
        self.model.changed.connect(self._on_model_changed)
        self.library.changed.connect(self.reload_library)
        self.learn.learned.connect(self._on_learned)
        self.setMinimumWidth(360)

    # ================================================================ layers ==============
    @staticmethod
    def _is_user_image(layer: Any) -> bool:
        from napari.layers import Image

        return isinstance(layer, Image) and _prompts.role(layer) is None

    def _layer_named(self, name: str) -> Any:
        return next((ly for ly in self.viewer.layers if ly.name == name), None)

    def _image_by_token(self, tok: str | None) -> Image | None:
        if not tok:
            return None
        return next(
            (
                ly
                for ly in self.viewer.layers
                if self._is_user_image(ly) and ly.metadata.get(_prompts.TOKEN) == tok
            ),
            None,
        )

    @property
    def image_layer(self) -> Image | None:
        """The image the dock works on (None when there is none)."""
        return self._image_by_token(self._image_token)

    def masks_layer(self, image: Image | None = None) -> Labels | None:
        image = image or self.image_layer
        return _prompts.find_linked(self.viewer, image, _prompts.MASKS) if image else None

    def prompts_layer(self, image: Image | None = None) -> Shapes | None:
        image = image or self.image_layer
        return _prompts.find_linked(self.viewer, image, _prompts.PROMPTS) if image else None

    def refresh_images(self) -> None:
        names = [ly.name for ly in self.viewer.layers if self._is_user_image(ly)]
        current = self.image_layer.name if self.image_layer else ""
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        else:
            self.image_combo.setCurrentIndex(-1)
        self.image_combo.blockSignals(False)

    def set_image_layer(self, image: Image | str) -> None:
        """Work on ``image``: link (or create) its boxes and masks layers, route its slice."""
        image = self._layer_named(image if isinstance(image, str) else image.name)
        if not self._is_user_image(image):
            raise ValueError(f"{image!r} is not an image layer")
        self._image_token = _prompts.token(image)
        if self.image_combo.currentText() != image.name:
            self.image_combo.blockSignals(True)
            self.image_combo.setCurrentText(image.name)
            self.image_combo.blockSignals(False)
        if image.multiscale:
            self.card.show_text(
                describe_route(None), f"{image.name}: multiscale images are not supported"
            )
            return
        if self.masks_layer(image) is None:
            _prompts.make_masks(self.viewer, image)
        if self.prompts_layer(image) is None:
            _prompts.make_prompts(self.viewer, image)
        prompts = self.prompts_layer(image)
        self._connect_prompts(prompts)
        self.viewer.layers.selection.active = prompts
        prompts.mode = "add_rectangle"
        self.learn.refresh_labels()
        self.prepare_btn.setEnabled(n_leading(image.data.shape, image.rgb) > 0)
        self.interp_btn.setEnabled(n_leading(image.data.shape, image.rgb) > 0)
        self.route = None
        self._show_route()
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
        self.refresh_images()
        QTimer.singleShot(0, self._after_layers_changed)

    def _on_layer_renamed(self, event: Any = None) -> None:
        self.refresh_images()
        self.learn.refresh_labels()
        self._show_route()

    def _after_layers_changed(self) -> None:
        try:
            self.learn.refresh_labels()
        except RuntimeError:
            return
        if self.image_layer is None:
            images = [ly for ly in self.viewer.layers if self._is_user_image(ly)]
            if images:
                self.set_image_layer(images[-1])
            else:
                self._image_token = None
                self.route = None
                self._show_route()

    def _on_image_combo(self, name: str) -> None:
        if (
            name
            and name in self.viewer.layers
            and (self.image_layer is None or self.image_layer.name != name)
        ):
            self.set_image_layer(name)

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        layer = self._layer_named(active.name) if active is not None else None
        if layer is None:
            return
        image = layer if self._is_user_image(layer) else _prompts.image_of(self.viewer, layer)
        if image is not None and _prompts.token(image) != self._image_token:
            if self._is_user_image(layer):
                # selecting an image switches to it without stealing the selection
                self._image_token = _prompts.token(image)
                self.image_combo.blockSignals(True)
                self.image_combo.setCurrentText(image.name)
                self.image_combo.blockSignals(False)
                if self.prompts_layer(image) is None:
                    QTimer.singleShot(0, partial(self._link_quietly, self._image_token))
                self.learn.refresh_labels()
                self.route = None
                self._show_route()
                self._schedule_route()
            else:
                self.set_image_layer(image)

    def _link_quietly(self, tok: str) -> None:
        image = self._image_by_token(tok)
        if image is None:
            return
        active = self.viewer.layers.selection.active
        selected = self._layer_named(active.name) if active is not None else None
        self.set_image_layer(image)
        if selected is not None:
            self.viewer.layers.selection.active = selected

    def current_index(self, image: Image | None = None) -> Index:
        """Plane index of ``image`` on the slice in view (``()`` for a 2-D image)."""
        image = image or self.image_layer
        if image is None:
            return ()
        shape = spatial_shape(image.data.shape, image.rgb)
        n = len(shape) - 2
        if n <= 0:
            return ()
        point = image.world_to_data(self.viewer.dims.point)
        return index_from_point(point, n, shape)

    def _where(self, image: Image | None, index: Index) -> str:
        if image is None:
            return ""
        if not index:
            return image.name
        n = spatial_shape(image.data.shape, image.rgb)[0]
        if len(index) == 1:
            return f"{image.name} · slice {index[0] + 1} of {n}"
        return f"{image.name} · plane {index}"

    # ================================================================ model ===============
    def load_model(self) -> None:
        """Load the predictor in the background (no-op while a checkpoint is missing)."""
        if not self.model.ready():
            self.model.status.setText(
                f"Choose the checkpoint file of {BACKBONE_TITLES.get(self.model.backbone_name)} to use it."
            )
            return
        self.model.status.setText("Loading the model…")
        self.jobs.submit(
            Job(
                self.session.job_load,
                key="load",
                yielded=self._on_job_text,
                returned=self._on_loaded,
                errored=self._on_load_error,
            )
        )

    def _on_loaded(self, result: tuple[Any, list[str]]) -> None:
        predictor, devices = result
        self.model.set_devices(devices)
        dev = getattr(predictor.backbone, "device", "?")
        n = len(predictor.task_names)
        self.model.status.setText(
            f"{BACKBONE_TITLES.get(self.session.backbone, self.session.backbone)} on {dev} · "
            f"{n} task{'s' if n != 1 else ''} · {predictor.backbone.identity}"
        )
        self._tasks_changed(list(predictor.task_names))
        problems = getattr(predictor, "problems", [])
        if problems:
            _notify(
                "warning", "Some tasks of the library cannot be used: " + "; ".join(problems[:3])
            )
        self._schedule_route()

    def _on_load_error(self, exc: BaseException) -> None:
        self.model.status.setText(f"Model not loaded: {exc}")
        self._on_job_error(exc)

    def _on_model_changed(self) -> None:
        s = self.settings
        s.backbone = self.model.backbone_name
        s.device = self.model.device_name
        s.library = self.model.library_dir
        s.checkpoints = self.model.checkpoints
        s.disk_cache = self.model.disk_cache.isChecked()
        s.save(self._settings_path)
        changed = self.session.configure(
            s.backbone, self.model.checkpoint_path, s.device, s.library, s.disk_cache
        )
        if changed:
            self.route = None
            self._show_route()
            self.library.refresh()
            self._tasks_changed(self.session.task_names() if self.model.ready() else [])
            self.load_model()

    # ================================================================ routing =============
    def _schedule_route(self, event: Any = None) -> None:
        self._route_timer.start(ROUTE_DELAY_MS)

    def update_route(self) -> None:
        """Route the slice in view (embedding it first when auto-routing is on)."""
        image = self.image_layer
        if (
            image is None
            or image.multiscale
            or self.session.predictor is None
            and not self.model.ready()
        ):
            self._show_route()
            return
        index = self.current_index(image)
        img = plane(image.data, index)
        self.jobs.submit(
            Job(
                self.session.job_route,
                (img, index, self.auto_route.isChecked()),
                key="route",
                yielded=self._on_job_text,
                returned=partial(self._on_routed, _prompts.token(image)),
                errored=self._on_route_error,
            ),
            replace=True,
        )

    def _on_routed(self, tok: str, result: Routed) -> None:
        image = self.image_layer
        if (
            image is None
            or _prompts.token(image) != tok
            or result.index != self.current_index(image)
        ):
            return
        if result.route is not None or self.route is None:
            self.route = result.route
        self._show_route(result.index)

    def _on_route_error(self, exc: BaseException) -> None:
        """Routing runs on its own as the user scrolls: show problems on the card, quietly."""
        from casam.errors import CasamError

        if not isinstance(exc, CasamError):
            log.error("napari-casam: routing failed", exc_info=exc)
        self.route = None
        image = self.image_layer
        self.card.show_text(
            RouteText("Not routed", str(exc), "unknown"),
            self._where(image, self.current_index(image)),
        )

    def _show_route(self, index: Index | None = None) -> None:
        image = self.image_layer
        index = self.current_index(image) if index is None else index
        self.card.show_text(
            describe_route(self.route, self.override_value), self._where(image, index)
        )

    @property
    def override_value(self) -> str:
        return self.override.currentData() or AUTO

    def set_override(self, value: str) -> None:
        i = self.override.findData(value)
        if i < 0:
            raise ValueError(f"unknown choice {value!r}")
        self.override.setCurrentIndex(i)

    def _fill_override(self, names: list[str]) -> None:
        current = self.override.currentData() or AUTO
        self.override.blockSignals(True)
        self.override.clear()
        self.override.addItem("Automatic (router)", AUTO)
        self.override.addItem("Plain SAM", SAM)
        for n in names:
            self.override.addItem(f"Task: {n}", n)
        i = self.override.findData(current)
        self.override.setCurrentIndex(max(i, 0))
        self.override.blockSignals(False)
        if i < 0:
            self._show_route()

    def _on_override(self, _: int) -> None:
        self._show_route()

    def _on_auto_route(self, on: bool) -> None:
        self.settings.auto_route = bool(on)
        self.settings.save(self._settings_path)
        if on:
            self._schedule_route()

    # ================================================================ segmentation ========
    def _on_prompts_data(self, event: Any) -> None:
        if str(getattr(event, "action", "")) != "added":
            return
        self.segment_new_boxes(event.source)

    def segment_new_boxes(self, prompts: Shapes | None = None) -> int:
        """Segment every box of ``prompts`` not segmented yet; returns how many were queued."""
        prompts = prompts or self.prompts_layer()
        if prompts is None:
            return 0
        image = _prompts.image_of(self.viewer, prompts)
        if image is None or image.multiscale:
            return 0
        t0 = time.perf_counter()
        feats = prompts.features
        ids = feats["box_id"].to_numpy()
        next_id = int(ids.max()) + 1 if len(ids) else 1
        shape = spatial_shape(image.data.shape, image.rgb)
        n_lead = len(shape) - 2
        groups: dict[Index, list[tuple[int, np.ndarray]]] = {}
        skipped = 0
        for row in np.flatnonzero(ids == 0):
            bid = next_id
            next_id += 1
            feats.loc[row, "box_id"] = bid
            if prompts.shape_type[row] != "rectangle":
                feats.loc[row, "label"] = -1
                skipped += 1
                continue
            index, box = rectangle_to_box(prompts.data[row], shape[-2:])
            if (
                box is None
                or len(index) != n_lead
                or any(not 0 <= i < s for i, s in zip(index, shape[:n_lead], strict=True))
            ):
                feats.loc[row, "label"] = -1
                skipped += 1
                continue
            groups.setdefault(index, []).append((bid, box))
        if skipped:
            _notify("info", f"{skipped} shape(s) ignored: draw rectangles inside the image.")
        tok = _prompts.token(image)
        for index, items in groups.items():
            boxes = np.stack([b for _, b in items])
            self.jobs.submit(
                Job(
                    self.session.job_segment,
                    (
                        plane(image.data, index),
                        index,
                        boxes,
                        self.override_value,
                        [i for i, _ in items],
                    ),
                    key="segment",
                    yielded=self._on_job_text,
                    returned=partial(self._on_segmented, tok, t0),
                    errored=self._on_job_error,
                )
            )
        return sum(len(v) for v in groups.values())

    def _on_segmented(self, tok: str, t0: float, res: Segmented) -> None:
        image = self._image_by_token(tok)
        prompts = self.prompts_layer(image) if image is not None else None
        if prompts is None:
            return
        if self.masks_layer(image) is None:
            _prompts.make_masks(self.viewer, image)
        masks = self.masks_layer(image)
        base = next_label(masks.data)
        values: list[int] = []
        with masks.block_history():
            for m in res.masks:
                current = plane(masks.data, res.index)
                ix = mask_to_indices(m, res.index, current, preserve_existing=True)
                if ix[-1].size:
                    value = base + len([v for v in values if v])
                    masks.data_setitem(ix, value)
                    values.append(value)
                else:
                    values.append(0)
        written = [v for v in values if v]
        feats = prompts.features
        for bid, value in zip(res.tags, values, strict=False):
            rows = np.flatnonzero(feats["box_id"].to_numpy() == bid)
            if rows.size:
                feats.loc[rows[0], "label"] = value if value else -1
        if written:
            masks.selected_label = written[-1]
        dt = time.perf_counter() - t0
        self.last_segmentation = res
        self.last_timing = {"box_to_mask": dt, "model": res.seconds, "embed": res.embed_seconds}
        used = res.task or "plain SAM"
        empty = len(values) - len(written)
        msg = f"{len(written)} mask{'s' if len(written) != 1 else ''} with {used} in {dt:.2f} s"
        if res.embed_seconds > 0.3:
            msg += f" (embedding {res.embed_seconds:.1f} s)"
        if empty:
            msg += f"; {empty} box(es) gave no new pixels"
        self.status.setText(msg + ".")
        if tok == self._image_token and res.index == self.current_index(image):
            if res.route is not None and not getattr(res.route, "forced", False):
                self.route = res.route
            elif self.override_value != AUTO and self.session.predictor is not None:
                self.route = self.session.predictor.route or self.route
            self._show_route(res.index)

    def _box_presence(self, prompts: Shapes, masks: Labels) -> dict[int, bool]:
        """For every segmented box (by row): does its label still appear on its plane?"""
        out = {}
        labels = prompts.features["label"].to_numpy()
        for row in np.flatnonzero(labels > 0):
            index, _ = rectangle_to_box(prompts.data[row])
            try:
                out[int(row)] = bool((plane(masks.data, index) == labels[row]).any())
            except (IndexError, ValueError):
                out[int(row)] = False
        return out

    def undo_segmentation(self) -> bool:
        """Ctrl+Z on the boxes layer: undo the last edit of the masks layer (as Ctrl+Z there
        does); boxes whose mask this removed are removed too."""
        masks, prompts = self.masks_layer(), self.prompts_layer()
        if masks is None:
            return False
        before = self._box_presence(prompts, masks) if prompts is not None else {}
        masks.undo()
        if prompts is not None:
            after = self._box_presence(prompts, masks)
            gone = {r for r, present in before.items() if present and not after.get(r, False)}
            if gone:
                prompts.selected_data = gone
                prompts.remove_selected()
        return True

    def redo_segmentation(self) -> None:
        masks = self.masks_layer()
        if masks is not None:
            masks.redo()

    # ================================================================ volumes =============
    def prepare_volume(self) -> bool:
        """Embed every slice of the image in the background (Shift-E)."""
        image = self.image_layer
        if image is None or n_leading(image.data.shape, image.rgb) <= 0:
            _notify("info", "Prepare volume is for 3-D images; this image has a single plane.")
            return False
        shape = spatial_shape(image.data.shape, image.rgb)
        indices = plane_indices(shape[:-2])
        t0 = time.perf_counter()
        self._submit_per_slice(
            self.session.job_prepare,
            (partial(plane, image.data), indices),
            key="prepare",
            counting="Embedding slice",
            returned=lambda n: self._set_status(
                f"Volume prepared: {n} slices embedded in {time.perf_counter() - t0:.0f} s; "
                "boxes now answer at once."
            ),
        )
        return True

    def _submit_per_slice(
        self, fn: Any, args: tuple, *, key: str, counting: str, returned: Any
    ) -> None:
        """Run a job that works slice by slice: the status counts slices, Cancel stops it."""
        self._cancel = threading.Event()
        self.job_cancel.setEnabled(True)
        self.jobs.submit(
            Job(
                fn,
                (*args, self._cancel),
                key=key,
                yielded=partial(self._on_count, counting),
                returned=returned,
                errored=self._on_job_error,
            )
        )

    def _interpolation_pair(self, prompts: Shapes) -> tuple[int, int] | None:
        feats = prompts.features
        labels = feats["label"].to_numpy()
        sel = sorted(prompts.selected_data)
        if len(sel) == 2:
            rows = sel
        else:
            done = [int(r) for r in np.flatnonzero(labels > 0)]
            done.sort(key=lambda r: int(feats["box_id"].iloc[r]))
            rows = []
            for r in reversed(done):
                if (
                    not rows
                    or rectangle_to_box(prompts.data[r])[0]
                    != rectangle_to_box(prompts.data[rows[0]])[0]
                ):
                    rows.append(r)
                if len(rows) == 2:
                    break
            if len(rows) != 2:
                return None
        rows.sort(key=lambda r: int(feats["box_id"].iloc[r]))
        return rows[0], rows[1]

    def interpolate(self) -> bool:
        """Segment the slices between two boxes of one structure, as one undoable step."""
        image, prompts = self.image_layer, self.prompts_layer()
        if image is None or prompts is None or n_leading(image.data.shape, image.rgb) <= 0:
            _notify("info", "Interpolation needs a 3-D image with boxes on two slices.")
            return False
        pair = self._interpolation_pair(prompts)
        if pair is None:
            _notify("info", "Draw a box around the structure on two different slices first.")
            return False
        shape = spatial_shape(image.data.shape, image.rgb)
        (ia, ba), (ib, bb) = (rectangle_to_box(prompts.data[r], shape[-2:]) for r in pair)
        if ba is None or bb is None:
            return False
        try:
            items = interpolate_boxes(ia, ba, ib, bb)
        except ValueError as exc:
            _notify("warning", str(exc))
            return False
        if not items:
            _notify("info", "The two boxes are on neighbouring slices: nothing lies between them.")
            return False
        feats = prompts.features
        label_a = int(feats["label"].iloc[pair[0]])
        label_b = int(feats["label"].iloc[pair[1]])
        t0 = time.perf_counter()
        self._submit_per_slice(
            self.session.job_interpolate,
            (partial(plane, image.data), items, self.override_value),
            key="interpolate",
            counting="Interpolating slice",
            returned=partial(
                self._on_interpolated, _prompts.token(image), (ib, label_b), label_a, t0
            ),
        )
        return True

    def _on_interpolated(
        self, tok: str, end: tuple[Index, int], label_a: int, t0: float, result: list
    ) -> None:
        image = self._image_by_token(tok)
        masks = self.masks_layer(image) if image is not None else None
        if masks is None:
            return
        value = label_a if label_a > 0 else next_label(masks.data)
        index_b, label_b = end
        with masks.block_history():
            for index, m in result:
                ix = mask_to_indices(m, index, plane(masks.data, index), preserve_existing=True)
                if ix[-1].size:
                    masks.data_setitem(ix, value)
            if label_b > 0 and label_b != value:
                rows, cols = np.nonzero(plane(masks.data, index_b) == label_b)
                if rows.size:
                    lead = tuple(np.full(rows.shape, i, dtype=np.intp) for i in index_b)
                    masks.data_setitem((*lead, rows, cols), value)
        masks.selected_label = value
        self._set_status(
            f"Interpolated {len(result)} slices as label {value} in {time.perf_counter() - t0:.1f} s "
            "(one undo step)."
        )

    def cancel_jobs(self) -> None:
        """Stop preparing or interpolating (at the next slice) and drop queued work."""
        self._cancel.set()
        self.job_cancel.setEnabled(False)

    # ================================================================ library / learn =====
    def reload_library(self) -> None:
        """Make the predictor re-read the library (after learn, rename, delete, import)."""
        self.jobs.submit(
            Job(
                self.session.job_reload,
                key="reload",
                returned=self._on_reloaded,
                errored=self._on_job_error,
            )
        )

    def _on_reloaded(self, names: list[str]) -> None:
        self._tasks_changed(names)
        self.library.refresh()
        self.route = None
        self._show_route()
        self._schedule_route()

    def _tasks_changed(self, names: list[str]) -> None:
        self._fill_override(names)
        self.learn.set_task_names(names)

    def _on_learned(self, info: Any) -> None:
        self.reload_library()
        self.library.select(info.name)

    # ================================================================ job feedback ========
    def _on_busy(self, busy: bool) -> None:
        if not busy:
            self.job_bar.setRange(0, 1)
            self.job_bar.setValue(0)
            self.job_bar.setFormat("Idle")
            self.job_cancel.setEnabled(False)

    def _on_job_text(self, value: Any) -> None:
        if isinstance(value, str):
            self.job_bar.setRange(0, 0)
            self.job_bar.setFormat(value)

    def _on_count(self, what: str, value: tuple[int, int]) -> None:
        done, total = value
        self.job_bar.setRange(0, max(total, 1))
        self.job_bar.setValue(done)
        self.job_bar.setFormat(f"{what} {done}/{total}")

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _on_job_error(self, exc: BaseException) -> None:
        from casam.errors import CasamError
        from napari_casam._session import Cancelled

        if isinstance(exc, Cancelled):
            self._set_status("Cancelled.")
            return
        if isinstance(exc, CasamError):
            _notify("warning", str(exc))
            self._set_status(str(exc))
            return
        log.error("napari-casam: background job failed", exc_info=exc)
        _notify("error", f"CA-SAM: {type(exc).__name__}: {exc}")
        self._set_status(f"Failed: {exc}")

    # ================================================================ lifecycle ===========
    @property
    def busy(self) -> bool:
        """True while any background work (jobs or training) is running or queued."""
        return self.jobs.busy or self.learn.running or self._route_timer.isActive()

    def close_jobs(self) -> None:
        self._route_timer.stop()
        self._cancel.set()
        self.jobs.clear()
        self.learn.cancel()


def make_widget(viewer: napari.viewer.Viewer) -> CasamWidget:
    """npe2 command ``napari-casam.make_widget``."""
    return CasamWidget(viewer)
