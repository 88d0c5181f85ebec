"""Learn-task section: train a task from an image and its corrected Labels layer."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QCompleter,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_casam import _workers
from napari_casam._layers import spatial_shape, training_pairs

if TYPE_CHECKING:
    import napari

    from napari_casam._session import Session

STAGES = {
    "embed": "Embedding slices",
    "align": "Training the Alignment Layer",
    "vae": "Training the router",
    "calibrate": "Calibrating the threshold",
    "evaluate": "Measuring held-out IoU",
    "save": "Saving",
}

MODES = (
    ("new", "New task"),
    ("replace", "Retrain (replace the task)"),
    ("extend", "Extend (add these slices)"),
)


def describe_progress(p: Any) -> tuple[str, int, int]:
    """Progress bar text and (value, maximum) for one engine ``Progress`` (or a str)."""
    if isinstance(p, str):
        return p, 0, 0
    stage = STAGES.get(getattr(p, "stage", ""), str(getattr(p, "stage", "")))
    parts = [stage]
    epoch = getattr(p, "epoch", None)
    if epoch is not None and getattr(p, "stage", "") == "align":
        parts.append(f"epoch {epoch}")
    loss = getattr(p, "loss", None)
    if loss is not None and not (isinstance(loss, float) and math.isnan(loss)):
        parts.append(f"loss {loss:.3f}")
    total = int(getattr(p, "total", 0) or 0)
    step = int(getattr(p, "step", 0) or 0)
    if total:
        parts.append(f"{min(step, total)}/{total}")
    return " · ".join(parts), min(step, total), total


def describe_result(info: Any, seconds: float) -> str:
    """One line for the dock after a task was learned."""

    def f(x: Any) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"

    head = (
        f"Learned “{info.name}” from {info.n_images} images ({info.n_objects} objects) "
        f"in {seconds:.0f} s."
    )
    if info.iou_task is None or info.iou_sam is None:
        return head + " No images were held out, so no IoU was measured."
    n = getattr(info, "n_holdout", None)
    on = f" on {n} held-out images" if n else " on held-out images"
    return head + f" IoU{on}: SAM {f(info.iou_sam)} → task {f(info.iou_task)}."


class LearnPanel(QWidget):
    """Emits ``learned(TaskInfo)`` once a task is in the library."""

    learned = Signal(object)

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        session: Session,
        image_layer: Callable[[], Any],
        default_labels: Callable[[Any], Any],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self._image_layer = image_layer
        self._default_labels = default_labels
        self.settings_overrides: dict[str, Any] = {}
        """Extra ``LearnSettings`` fields (tests use a tiny schedule)."""
        self.worker: Any = None
        self._cancel = threading.Event()
        self._t0 = 0.0
        self.last_info: Any = None
        self.last_error: str | None = None

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)

        self.labels = QComboBox()

        self.labels.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)

        self.labels.setMinimumContentsLength(8)
        self.labels.setToolTip(
            "Labels layer with the corrected masks of the selected image. Every slice with "
            "labels is a training image; every label value on it is one object."
        )
        form.addRow("Masks", self.labels)

        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. CT spleen")
        self.name.setToolTip(
            "Name of the task (the kind of images and structure, e.g. “CT spleen”)."
        )
        self._completer_names: list[str] = []
        form.addRow("Task name", self.name)

        self.mode = QComboBox()

        self.mode.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)

        self.mode.setMinimumContentsLength(8)
        for key, title in MODES:
            self.mode.addItem(title, key)
        self.mode.setToolTip(
            "New: a task of a new name. Retrain: learn the named task again from these "
            "slices only. Extend: learn it again from its previous images plus these slices."
        )
        form.addRow("Mode", self.mode)

        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        from casam.config import LearnSettings

        self.epochs.setValue(LearnSettings().epochs)
        self.epochs.setToolTip(
            "Passes over the training objects. More epochs fit better and take longer "
            "(about 1 s per object per epoch on a laptop CPU)."
        )
        form.addRow("Epochs", self.epochs)

        row = QHBoxLayout()
        self.learn_btn = QPushButton("Learn task")
        self.learn_btn.setToolTip(
            "Train a task from the image and its masks in the background (Shift-L on the "
            "boxes layer). The viewer stays usable."
        )
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop training; nothing is saved.")
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.learn_btn, 1)
        row.addWidget(self.cancel_btn)
        form.addRow(row)

        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setValue(0)
        self.progress.setToolTip("Training stage, epoch, loss and steps.")
        form.addRow(self.progress)

        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setToolTip("Outcome of the last training.")
        form.addRow(self.result)

        self.learn_btn.clicked.connect(lambda: self.learn())
        self.cancel_btn.clicked.connect(self.cancel)

    # ---- state ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def set_task_names(self, names: list[str]) -> None:
        if names != self._completer_names:
            self._completer_names = list(names)
            self.name.setCompleter(QCompleter(names, self))

    def refresh_labels(self) -> None:
        """List the Labels layers matching the selected image; keep or default the choice."""
        from napari.layers import Labels

        image = self._image_layer()
        current = self.labels.currentText()
        self.labels.blockSignals(True)
        self.labels.clear()
        if image is not None:
            shape = spatial_shape(image.data.shape, image.rgb)
            for layer in self.viewer.layers:
                if isinstance(layer, Labels) and tuple(layer.data.shape) == shape:
                    self.labels.addItem(layer.name)
        default = self._default_labels(image) if image is not None else None
        names = [self.labels.itemText(i) for i in range(self.labels.count())]
        if current in names:
            self.labels.setCurrentText(current)
        elif default is not None and default.name in names:
            self.labels.setCurrentText(default.name)
        self.labels.blockSignals(False)

    def labels_layer(self) -> Any:
        name = self.labels.currentText()
        return next((ly for ly in self.viewer.layers if ly.name == name), None) if name else None

    # ---- actions --------------------------------------------------------------------------
    def learn(self, name: str | None = None, mode: str | None = None) -> bool:
        """Start training; returns False (with a notification) when it cannot start."""
        if self.running:
            self._fail("A task is already being learned; cancel it first.")
            return False
        if name is not None:
            self.name.setText(name)
        if mode is not None:
            self.mode.setCurrentIndex(self.mode.findData(mode))
        name = self.name.text().strip()
        mode = self.mode.currentData()
        image, labels = self._image_layer(), self.labels_layer()
        problem = None
        if not name:
            problem = "Give the new task a name first."
        elif image is None:
            problem = "Select an image layer to learn from."
        elif labels is None:
            problem = "Choose the Labels layer with the corrected masks of this image."
        elif image.multiscale:
            problem = "Multiscale images are not supported for learning; use a single-scale copy."
        elif mode == "new" and name in self.session.task_names():
            problem = f"A task named “{name}” exists: choose Retrain or Extend, or another name."
        elif mode != "new" and name not in self.session.task_names():
            problem = f"There is no task “{name}” to retrain or extend."
        if problem:
            self._fail(problem)
            return False
        try:
            images, masks, _ = training_pairs(image.data, labels.data, image.rgb)
        except ValueError as exc:
            self._fail(str(exc))
            return False
        if not images:
            self._fail(f"“{labels.name}” has no labels yet: segment and correct some slices first.")
            return False

        from casam import LearnSettings

        settings = LearnSettings(**{"epochs": self.epochs.value(), **self.settings_overrides})
        self._cancel = threading.Event()
        self._t0 = time.perf_counter()
        self.last_error = None
        self.learn_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.result.setText(f"Learning “{name}” from {len(images)} annotated images…")
        self.progress.setRange(0, 0)
        self.progress.setFormat("Starting…")
        self.worker = _workers.start(
            self.session.job_learn,
            images,
            masks,
            name,
            settings,
            mode == "replace",
            mode == "extend",
            self._cancel,
            yielded=self._on_progress,
            returned=self._on_returned,
            errored=self._on_error,
            finished=self._on_finished,
        )
        return True

    def cancel(self) -> None:
        """Stop training at the engine's next step; nothing is saved."""
        if not self.running:
            return
        self._cancel.set()
        self.cancel_btn.setEnabled(False)
        self.progress.setFormat("Cancelling…")

    # ---- worker callbacks -----------------------------------------------------------------
    def _on_progress(self, p: Any) -> None:
        text, value, total = describe_progress(p)
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(value)
        else:
            self.progress.setRange(0, 0)
        self.progress.setFormat(text)

    def _on_returned(self, info: Any) -> None:
        from napari.utils.notifications import show_info

        if info is None:
            self.result.setText("Training cancelled; nothing was saved.")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("Cancelled")
            show_info("Training cancelled; nothing was saved.")
            return
        self.last_info = info
        text = describe_result(info, time.perf_counter() - self._t0)
        self.result.setText(text)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("Done")
        show_info(text)
        self.learned.emit(info)

    def _on_error(self, exc: BaseException) -> None:
        from casam.errors import CasamError

        if isinstance(exc, CasamError):
            self._fail(str(exc))
        else:
            import logging

            logging.getLogger(__name__).error("learning failed", exc_info=exc)
            self._fail(f"Learning failed: {type(exc).__name__}: {exc}", error=True)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("Failed")

    def _on_finished(self) -> None:
        self.worker = None
        self.learn_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _fail(self, msg: str, error: bool = False) -> None:
        from napari.utils.notifications import show_error, show_warning

        self.last_error = msg
        self.result.setText(msg)
        (show_error if error else show_warning)(msg)
