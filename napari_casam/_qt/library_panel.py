"""Task library section: list, rename, delete, import and export the learned tasks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_casam._notify import notify as _notify
from napari_casam._texts import (
    COLUMNS,
    EXPORT_FILTER,
    HIDDEN_COLUMNS,
    TIPS,
    adapter_title,
    iou_tip,
    task_row,
)

if TYPE_CHECKING:
    from napari_casam._session import Session


class LibraryPanel(QWidget):
    """Emits ``changed`` after the library was modified (the predictor must reload)."""

    changed = Signal()

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        for c in range(1, len(COLUMNS)):
            header.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        self.table.setToolTip(TIPS["table"])
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setTextElideMode(Qt.ElideRight)
        for c in HIDDEN_COLUMNS:
            self.table.setColumnHidden(c, True)
        self.table.setMinimumHeight(90)
        layout.addWidget(self.table)

        self.empty = QLabel("No task learned for this backbone yet.")
        self.empty.setStyleSheet("color: #9e9e9e;")
        self.empty.setWordWrap(True)
        layout.addWidget(self.empty)

        row = QHBoxLayout()
        self.rename_btn = QPushButton("Rename…")
        self.rename_btn.setToolTip(TIPS["rename"])
        self.delete_btn = QPushButton("Delete…")
        self.delete_btn.setToolTip(TIPS["delete"])
        self.import_btn = QPushButton("Import…")
        self.import_btn.setToolTip(TIPS["import"])
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip(TIPS["export"])
        for b in (self.rename_btn, self.delete_btn, self.import_btn, self.export_btn):
            row.addWidget(b)
        layout.addLayout(row)

        self.rename_btn.clicked.connect(lambda: self.rename())
        self.delete_btn.clicked.connect(lambda: self.delete())
        self.import_btn.clicked.connect(lambda: self.import_task())
        self.export_btn.clicked.connect(lambda: self.export_task())
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self._update_buttons()

    # ---- listing --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the library folder."""
        selected = self.selected_name()
        try:
            rows = self.session.library_rows()
        except Exception as exc:  # noqa: BLE001 - a broken library must not break the dock
            _notify("warning", f"Cannot read the task library: {exc}")
            rows = []
        self.table.setRowCount(len(rows))
        for r, (info, refused) in enumerate(rows):
            for c, text in enumerate(task_row(info)):
                item = QTableWidgetItem(text if c or not refused else f"{text} (refused)")
                if c:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c in (0, 4):
                    item.setToolTip(
                        f"{info.name} · {adapter_title(info.adapter)} · created {info.created}"
                    )
                if c == 3 and info.iou_task is not None and info.iou_sam is not None:
                    item.setToolTip(iou_tip(info))
                if refused:
                    item.setForeground(Qt.gray)
                    item.setToolTip(f"Routing does not use this task: {refused}")
                item.setData(Qt.UserRole, info.name)
                self.table.setItem(r, c, item)
        self.empty.setVisible(not rows)
        if selected:
            self.select(selected)
        self._update_buttons()

    def names(self) -> list[str]:
        return [self.table.item(r, 0).data(Qt.UserRole) for r in range(self.table.rowCount())]

    def select(self, name: str) -> None:
        for r, n in enumerate(self.names()):
            if n == name:
                self.table.selectRow(r)
                return

    def selected_name(self) -> str | None:
        rows = {i.row() for i in self.table.selectedItems()}
        if len(rows) != 1:
            return None
        return self.table.item(rows.pop(), 0).data(Qt.UserRole)

    def _update_buttons(self) -> None:
        has = self.selected_name() is not None
        for b in (self.rename_btn, self.delete_btn, self.export_btn):
            b.setEnabled(has)

    # ---- actions --------------------------------------------------------------------------
    def rename(self, name: str | None = None, new: str | None = None) -> bool:
        """Rename ``name`` (default: the selected task) to ``new`` (default: ask)."""
        name = name or self.selected_name()
        if not name:
            return False
        if new is None:
            new, ok = QInputDialog.getText(
                self, "Rename task", f"New name for “{name}”:", text=name
            )
            if not ok:
                return False
        new = new.strip()
        if not new or new == name:
            return False
        return self._apply(
            lambda: self.session.library.rename(name, new),
            f"Renamed “{name}” to “{new}”.",
            select=new,
        )

    def delete(self, name: str | None = None, confirm: bool = True) -> bool:
        """Delete ``name`` (default: the selected task); asks first unless ``confirm`` is False."""
        name = name or self.selected_name()
        if not name:
            return False
        if confirm:
            answer = QMessageBox.question(
                self,
                "Delete task",
                f"Delete the task “{name}” from the library?\n\n"
                "Its Alignment Layer and router are removed; images routed to it will use "
                "plain SAM. This cannot be undone (export it first to keep a copy).",
                QMessageBox.Yes | QMessageBox.Cancel,
                QMessageBox.Cancel,
            )
            if answer != QMessageBox.Yes:
                return False
        return self._apply(lambda: self.session.library.remove(name), f"Deleted task “{name}”.")

    def export_task(self, name: str | None = None, dest: str | Path | None = None) -> Path | None:
        """Export ``name`` to ``dest`` (a file or a folder; default: ask)."""
        name = name or self.selected_name()
        if not name:
            return None
        if dest is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export task", f"{name}.casamtask", EXPORT_FILTER
            )
            if not path:
                return None
            dest = path
        try:
            out = self.session.library.export(name, dest)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            _notify("error", f"Export failed: {exc}")
            return None
        _notify("info", f"Exported “{name}” to {out}")
        return Path(out)

    def import_task(self, path: str | Path | None = None, name: str | None = None) -> str | None:
        """Import a ``.casamtask`` file (default: ask); asks for a new name on a clash."""
        from casam.errors import TaskExistsError

        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Import task", "", EXPORT_FILTER + ";;All files (*)"
            )
            if not path:
                return None
        try:
            info = self.session.library.import_task(path, name=name)
        except TaskExistsError as exc:
            if name is not None:
                _notify("warning", str(exc))
                return None
            new, ok = QInputDialog.getText(
                self,
                "Import task",
                f"{exc}\n\nImport it under another name:",
                text=f"{Path(path).stem} (imported)",
            )
            if not ok or not new.strip():
                return None
            return self.import_task(path, new.strip())
        except Exception as exc:  # noqa: BLE001
            _notify("error", f"Import failed: {exc}")
            return None
        self.changed.emit()
        self.refresh()
        self.select(info.name)
        if self.session.identity and info.backbone != self.session.identity:
            _notify(
                "warning",
                f"Imported “{info.name}”, but it was learned with backbone {info.backbone}; "
                "switch to that backbone to use it.",
            )
        else:
            _notify("info", f"Imported task “{info.name}”.")
        return info.name

    def _apply(self, action: Any, message: str, select: str | None = None) -> bool:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - CasamError messages are written for users
            _notify("warning", str(exc))
            return False
        _notify("info", message)
        self.changed.emit()
        self.refresh()
        if select:
            self.select(select)
        return True
