"""One way to tell the user something: a napari notification (info, warning or error)."""

from __future__ import annotations


def notify(kind: str, msg: str) -> None:
    """Show ``msg`` as a napari notification of ``kind`` ("info", "warning" or "error")."""
    from napari.utils.notifications import show_error, show_info, show_warning

    {"info": show_info, "warning": show_warning, "error": show_error}[kind](msg)
