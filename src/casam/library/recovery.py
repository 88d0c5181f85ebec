"""Format migration and crash recovery of a library folder.

:func:`check_format` reads the folder's marker and brings an older format up to date.
:func:`cleanup_stale` is crash recovery, run under the library's lock (by every change, and by
a new ``TaskLibrary`` when the lock is free): writes of dead processes (``.tmp-*``, a
half-written marker) are removed; an overwrite interrupted between its two renames left the
old task in ``.trash-*`` and no task of that name, so the old version is put back if it is whole.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

from casam.config import LIBRARY_FORMAT_VERSION
from casam.errors import LibraryError
from casam.library import fs
from casam.library.format import MARKER, is_int
from casam.library.names import shown


def check_format(root: Path, create: bool) -> None:
    """Refuse a library of a newer format; migrate an older one (format 0 has no marker)."""
    marker = root / MARKER
    if marker.is_file():
        try:
            version = json.loads(marker.read_text("utf-8"))["format_version"]
            if not is_int(version):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise LibraryError(
                f"{shown(marker)} is unreadable; restore it or remove it to re-create it"
            ) from None
        if version > LIBRARY_FORMAT_VERSION:
            raise LibraryError(
                f"library {shown(root)} has format version {version}, newer than this "
                f"napari-casam understands ({LIBRARY_FORMAT_VERSION}); upgrade napari-casam "
                "to use it"
            )
        if version < LIBRARY_FORMAT_VERSION:
            migrate(root, version)
    elif create:
        # Format 0: a folder of task folders without a marker (e.g. copied by hand).
        migrate(root, 0)


def migrate(root: Path, version: int) -> None:
    """Bring a library of format ``version`` to the current one (so far: write the marker)."""
    with fs.locked(root):
        data = json.dumps(
            {"format": "casam-task-library", "format_version": LIBRARY_FORMAT_VERSION}, indent=1
        )
        tmp = root / f".{MARKER}.{os.getpid()}.tmp"
        try:
            fs.write_file(tmp, data.encode())
            os.replace(tmp, root / MARKER)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LibraryError(f"cannot write {shown(root / MARKER)} ({e.strerror})") from None


def cleanup_stale(root: Path, whole_task: Callable[[Path, str], bool]) -> None:
    """Tidy ``root``; ``whole_task(folder, name)`` says if a trash folder holds a whole task."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith(".tmp-") and fs.is_stale_tmp(p):
            fs.rmtree(p)
        elif p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp"):
            pid = p.name[len(MARKER) + 2 : -4]
            if pid.isdigit() and int(pid) != os.getpid() and not fs.pid_alive(int(pid)):
                p.unlink(missing_ok=True)
    for p in entries:
        if p.name.startswith(".trash-"):
            _restore_or_remove(root, p, whole_task)


def _restore_or_remove(root: Path, trash: Path, whole_task: Callable[[Path, str], bool]) -> None:
    # Trash folders are made and removed under the lock, so one seen here was left by a
    # process that died during an overwrite. If it died between its two renames, the
    # task is missing: put the old version back (if it is whole).
    name = unicodedata.normalize("NFC", trash.name.split("-", 2)[-1])
    target = root / name
    if (
        not trash.is_symlink()
        and not target.exists()
        and not target.is_symlink()
        and whole_task(trash, name)
    ):
        try:
            os.replace(trash, target)
            fs.fsync_dir(root)
            return
        except OSError:
            pass
    fs.rmtree(trash)
