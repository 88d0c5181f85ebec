"""The job bar: what runs in the background (text, count, time so far) and its Cancel.

Every repaint of a dock widget costs the GUI thread milliseconds (napari's window composes the
OpenGL canvas with the widgets), so the bar changes only when the user can see it matter: a job
that ends within :data:`SHOW_AFTER_MS` (a box on a cached slice) never touches it, and a job
without a count shows Qt's animated busy bar, which repaints many times a second, only once it
has run for :data:`ANIMATE_AFTER_MS`.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_casam._texts import TIPS, busy_text

#: A job shows on the bar once it has run this long (quicker ones never show).
SHOW_AFTER_MS = 400
#: A job without a count animates the busy bar once it has run this long.
ANIMATE_AFTER_MS = 1500

IDLE = ("Idle", 0, 1)


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
        self.label.setText("Idle")
        self.label.setMinimumHeight(self.label.sizeHint().height())  # one line even when empty
        self.label.setText("")
        outer.addWidget(self.label)
        self._want = IDLE
        self._shown: tuple = (*IDLE, False)
        self._t0: float | None = None
        self._delay = QTimer(self)
        self._delay.setSingleShot(True)
        self._delay.setInterval(SHOW_AFTER_MS)
        self._delay.timeout.connect(self._apply)
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._apply)

    def show_job(self, text: str, done: int, total: int) -> None:
        """Show ``text``; ``total`` 0 means busy without a count; "Idle" ends the jobs."""
        self._want = (text, done, total)
        if text == "Idle":
            self._delay.stop()
            self._clock.stop()
            self._t0 = None
            self._apply()
        elif self._t0 is None:  # the first job after idle: shown if it lasts
            self._t0 = time.perf_counter()
            self._delay.start()
            self._clock.start()
        elif not self._delay.isActive():
            self._apply()

    @property
    def elapsed(self) -> float:
        """Seconds since the jobs started (0 when idle)."""
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0

    def _apply(self) -> None:
        """Bring the widgets to the wanted state, touching only what changed."""
        if self._delay.isActive():
            return
        text, done, total = self._want
        seconds = self.elapsed
        animate = total == 0 and seconds * 1000.0 >= ANIMATE_AFTER_MS
        state = (text, done, total, animate)
        if state != self._shown:
            self._shown = state
            self.bar.setRange(0, 0 if animate else max(total, 1))
            self.bar.setValue(done if total else 0)
            self.bar.setFormat(text)
        label = "" if text == "Idle" else busy_text(text, seconds)
        if label != self.label.text():
            self.label.setText(label)
