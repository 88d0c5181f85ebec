"""The job bar: what runs in the background (text, count, time so far) and its Cancel."""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_casam._texts import TIPS, busy_text


class JobBar(QWidget):
    """A progress bar with a wrapping text line under it (busy bars show no text in Qt)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat("Idle")
        self.bar.setToolTip(TIPS["job_bar"])
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip(TIPS["job_cancel"])
        self.cancel.setEnabled(False)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel)
        outer.addLayout(row)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #9e9e9e;")
        outer.addWidget(self.label)
        self._text = ""
        self._t0 = 0.0
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)

    def show_job(self, text: str, done: int, total: int) -> None:
        """Show ``text``; ``total`` 0 means busy without a count."""
        if text == "Idle":
            self._clock.stop()
            self.label.setText("")
        elif not self._clock.isActive():
            self._t0 = time.perf_counter()
            self._clock.start()
        self._text = "" if text == "Idle" else text
        self.bar.setRange(0, total)
        if total:
            self.bar.setValue(done)
        self.bar.setFormat(text)
        self._tick()

    def _tick(self) -> None:
        if self._text:
            self.label.setText(busy_text(self._text, time.perf_counter() - self._t0))
