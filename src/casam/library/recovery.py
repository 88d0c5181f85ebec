"""Crash recovery: what a library looks like after a process died while changing it, and the fix.

Run under the library's lock (by every change, and by a new ``TaskLibrary`` when the lock is
free): writes of dead processes (``.tmp-*``, a half-written marker) are removed; an overwrite
interrupted between its two renames left the old task in ``.trash-*`` and no task of that name,
so the old version is put back if it is whole.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

from casam.library import fs
from casam.library.format import MARKER


def cleanup_stale(root: Path, whole_task: Callable[[Path, str], bool]) -> None:
    """Tidy ``root``; ``whole_task(folder, name)`` says whether a trash folder holds a whole task."""
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
