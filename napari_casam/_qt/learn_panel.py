"""Learn-task section: the controls of a :class:`~napari_casam._model.LearnModel`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
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

from napari_casam._layers import spatial_shape
from napari_casam._model.learn import LearnModel
from napari_casam._qt.common import combo
from napari_casam._qt.learn_files import LearnFilesDialog
from napari_casam._qt.learn_pairs import PairsList
from napari_casam._texts import ADAPTERS, MODES, TIPS, files_request

if TYPE_CHECKING:
    import napari


class LearnPanel(QWidget):
    """Shows the learn model; ``model.learned`` fires once a task is in the library."""

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        model: LearnModel,
        image_layer: Callable[[], Any],
        default_labels: Callable[[Any], Any],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.model = model
        self._image_layer = image_layer
        self._default_labels = default_labels
        self._completer_names: list[str] = []
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)
        self.labels = combo(TIPS["labels"])
        form.addRow("Masks", self.labels)
        self.others = PairsList(default_labels)
        form.addRow("Also from", self.others)
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. CT spleen")
        self.name.setToolTip(TIPS["task_name"])
        form.addRow("Task name", self.name)
        self.mode = combo(TIPS["mode"])
        for key, title in MODES:
            self.mode.addItem(title, key)
        form.addRow("Mode", self.mode)
        self.adapter = combo(TIPS["adapter"])
        for key, title in ADAPTERS:
            self.adapter.addItem(title, key)
        self.adapter.setCurrentIndex(self.adapter.findData(model.adapter))
        form.addRow("Adapter", self.adapter)
        from casam.config import LearnSettings

        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(LearnSettings().epochs)
        self.epochs.setToolTip(TIPS["epochs"])
        form.addRow("Epochs", self.epochs)
        self._add_buttons(form)
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setValue(0)
        self.progress.setToolTip(TIPS["learn_progress"])
        form.addRow(self.progress)
        self.progress_text = QLabel("")
        self.progress_text.setWordWrap(True)
        self.progress_text.setToolTip(TIPS["learn_progress"])
        form.addRow(self.progress_text)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setToolTip(TIPS["learn_result"])
        form.addRow(self.result)
        self._bind(model)

    def _add_buttons(self, form: QFormLayout) -> None:
        row = QHBoxLayout()
        self.learn_btn = QPushButton("Learn task")
        self.learn_btn.setToolTip(TIPS["learn"])
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip(TIPS["learn_cancel"])
        self.cancel_btn.setEnabled(False)
        row.addWidget(self.learn_btn, 1)
        row.addWidget(self.cancel_btn)
        form.addRow(row)
        self.files_btn = QPushButton("Learn from files…")
        self.files_btn.setToolTip(TIPS["learn_files"])
        form.addRow(self.files_btn)
        self.files_dialog: LearnFilesDialog | None = None

    def _bind(self, model: LearnModel) -> None:
        self.learn_btn.clicked.connect(lambda: self.learn())
        self.cancel_btn.clicked.connect(self.cancel)
        self.files_btn.clicked.connect(self.open_files_dialog)
        self.adapter.currentIndexChanged.connect(
            lambda _i: model.set_adapter(self.adapter.currentData())
        )
        model.progress.connect(self._on_progress)
        model.state_changed.connect(self._on_state)
        model.message.connect(self.result.setText, check_nargs=False)

    # ---- the model, as the tests and the dock see it ------------------------------------
    @property
    def running(self) -> bool:
        return self.model.running

    @property
    def worker(self) -> Any:
        return self.model.worker

    @property
    def last_error(self) -> str | None:
        return self.model.last_error

    @property
    def last_info(self) -> Any:
        return self.model.last_info

    @property
    def settings_overrides(self) -> dict[str, Any]:
        return self.model.settings_overrides

    @settings_overrides.setter
    def settings_overrides(self, value: dict[str, Any]) -> None:
        self.model.settings_overrides = dict(value)

    def set_task_names(self, names: list[str]) -> None:
        if names != self._completer_names:
            self._completer_names = list(names)
            self.name.setCompleter(QCompleter(names, self))

    def refresh_labels(self) -> None:
        """List the Labels layers matching the selected image (keep or default the choice),
        and the other open images with theirs."""
        from napari.layers import Labels

        from napari_casam._prompts import is_user_image

        image = self._image_layer()
        current = image.name if image is not None else None
        others = [ly for ly in self.viewer.layers if is_user_image(ly) and ly.name != current]
        labels = [ly for ly in self.viewer.layers if isinstance(ly, Labels)]
        self.others.refresh(others, labels)
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

    def learn(self, name: str | None = None, mode: str | None = None) -> bool:
        """Start training from the chosen image and Labels layer, and the other ticked images
        with theirs (False: refused, said why)."""
        self._set_request(name, mode)
        pairs = [(self._image_layer(), self.labels_layer()), *self.others.pairs()]
        return self.model.start_layers(
            self.name.text().strip(), self.mode.currentData(), pairs, self.epochs.value()
        )

    def learn_files(
        self, images: list[str], masks: list[str], name: str | None = None, mode: str | None = None
    ) -> bool:
        """Start training from image and mask files or folders (False: refused, said why)."""
        self._set_request(name, mode)
        return self.model.start_files(
            self.name.text().strip(), self.mode.currentData(), images, masks, self.epochs.value()
        )

    def open_files_dialog(self) -> LearnFilesDialog:
        """Show the "Learn from files…" dialog (one per panel: its lists are kept)."""
        if self.files_dialog is None:
            self.files_dialog = LearnFilesDialog(
                lambda i, m: self.learn_files(i, m), self._describe_request, self
            )
            self.model.message.connect(self.files_dialog.show_message, check_nargs=False)
        self.files_dialog.show()
        self.files_dialog.raise_()
        return self.files_dialog

    def _describe_request(self) -> str:
        return files_request(
            self.name.text().strip(),
            self.mode.currentText(),
            self.epochs.value(),
            self.adapter.currentText(),
        )

    def _set_request(self, name: str | None, mode: str | None) -> None:
        if name is not None:
            self.name.setText(name)
        if mode is not None:
            self.mode.setCurrentIndex(self.mode.findData(mode))

    def cancel(self) -> None:
        self.model.cancel()
        self.cancel_btn.setEnabled(False)

    def _on_progress(self, text: str, value: int, total: int) -> None:
        self.progress.setRange(0, total)
        if total:
            self.progress.setValue(value)
        self.progress_text.setText(text)

    def _on_state(self, running: bool) -> None:
        self.learn_btn.setEnabled(not running)
        self.files_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
