"""The "Learn from files…" dialog: image and mask files or folders, as ``casam learn`` takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_casam._texts import TIPS


class PathList(QWidget):
    """An ordered list of files and folders, with Add files…, Add folder… and Remove."""

    def __init__(self, title: str, tip: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        head = QLabel(f"<b>{title}</b>")
        head.setToolTip(tip)
        layout.addWidget(head)
        self.list = QListWidget()
        self.list.setToolTip(tip)
        self.list.setMinimumHeight(70)
        layout.addWidget(self.list)
        row = QHBoxLayout()
        self.files_btn = QPushButton("Add files…")
        self.folder_btn = QPushButton("Add folder…")
        self.remove_btn = QPushButton("Remove")
        for b in (self.files_btn, self.folder_btn, self.remove_btn):
            b.setToolTip(tip)
            row.addWidget(b)
        layout.addLayout(row)
        self.files_btn.clicked.connect(self._pick_files)
        self.folder_btn.clicked.connect(self._pick_folder)
        self.remove_btn.clicked.connect(self._remove)

    def paths(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def add_paths(self, paths: list[str]) -> None:
        self.list.addItems([str(p) for p in paths])

    def _pick_files(self) -> None:
        from casam.io import SUFFIXES

        patterns = " ".join(f"*{s}" for s in SUFFIXES)
        filters = f"Images and masks ({patterns});;All files (*)"
        paths, _ = QFileDialog.getOpenFileNames(self, self.title, "", filters)
        self.add_paths(paths)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, self.title)
        if path:
            self.add_paths([path])

    def _remove(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))


class LearnFilesDialog(QDialog):
    """Calls ``learn(images, masks)`` on Learn; closes when the training started."""

    def __init__(
        self,
        learn: Callable[[list[str], list[str]], bool],
        describe: Callable[[], str],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Learn a task from files")
        self._learn = learn
        self._describe = describe
        layout = QVBoxLayout(self)
        intro = QLabel(TIPS["files_intro"])
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.request = QLabel("")
        self.request.setToolTip(TIPS["files_request"])
        layout.addWidget(self.request)
        self.images = PathList("Images", TIPS["files_images"])
        self.masks = PathList("Masks", TIPS["files_masks"])
        layout.addWidget(self.images)
        layout.addWidget(self.masks)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        row = QHBoxLayout()
        self.learn_btn = QPushButton("Learn task")
        self.learn_btn.setToolTip(TIPS["files_learn"])
        self.close_btn = QPushButton("Close")
        self.close_btn.setToolTip("Close; the lists are kept for the next time.")
        row.addStretch(1)
        row.addWidget(self.learn_btn)
        row.addWidget(self.close_btn)
        layout.addLayout(row)
        self.learn_btn.clicked.connect(self.learn)
        self.close_btn.clicked.connect(self.reject)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self.request.setText(self._describe())
        super().showEvent(event)

    def learn(self) -> bool:
        """Start the training (the dialog closes) or say why it cannot start (it stays)."""
        started = self._learn(self.images.paths(), self.masks.paths())
        if started:
            self.message.setText("")
            self.accept()
        return started

    def show_message(self, text: str) -> None:
        self.message.setText(text)
