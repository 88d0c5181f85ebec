"""Tell the dock once when it goes away: its viewer's window closes, napari removes the dock,
the dock is closed, or the application quits."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication, QMainWindow, QWidget


class CloseGuard(QObject):
    """Calls ``on_close()`` once, at the first of the ways a dock can go away."""

    def __init__(self, dock: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(dock)
        self._dock = dock
        self._on_close = on_close
        self._window: weakref.ref | None = None
        """The viewer's window, weakly (it must not outlive napari's own teardown)."""
        self.fired = False
        dock.installEventFilter(self)
        app = QApplication.instance()
        if app is not None:
            me = weakref.ref(self)  # the application must not keep the dock (and viewer) alive
            app.aboutToQuit.connect(lambda: _fire(me))

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self._on_close()

    def eventFilter(self, obj: Any, event: Any) -> bool:
        kind = event.type()
        window = self._window() if self._window is not None else None
        if window is not None and obj is window and kind == QEvent.Close:
            self.fire()
        elif obj is self._dock:
            if kind == QEvent.Close:
                self.fire()
            elif kind == QEvent.ParentChange and obj.parent() is None and self._window:
                self.fire()  # napari's remove_dock_widget unparents the dock
            elif kind == QEvent.Show and self._window is None:
                top = obj.window()
                if isinstance(top, QMainWindow):  # the viewer's window, once docked there
                    self._window = weakref.ref(top)
                    top.installEventFilter(self)
        return False


def _fire(ref: weakref.ref) -> None:
    guard = ref()
    if guard is not None:
        guard.fire()
