"""Filesystem primitives of the library: durable writes, bounded reads, the lock, temp folders.

Every write goes to a temporary folder (``.tmp-<pid>-<host>-<hex>``) first and is renamed into
place under the library's file lock; these helpers know which temporary folders belong to a
live writer and which are leftovers of a dead process.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from casam.errors import LibraryError
from casam.library.names import shown

LOCK_TIMEOUT_S = 120.0
#: A ``.tmp-*`` folder older than this is a leftover whatever its process id says.
STALE_TMP_S = 6 * 3600.0

HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_ACTIVE: set[str] = set()
"""Names of the temporary folders this process is writing right now."""
_ACTIVE_LOCK = threading.Lock()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def rmtree(path: Path) -> None:
    """Remove a folder (or a symbolic link to one, without following it); ignore errors."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
            return
    except OSError:
        return
    shutil.rmtree(path, ignore_errors=True)


def os_message(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "the disk is full; free space and try again"
    return f"{e.strerror or e}; check that the folder is writable and try again"


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file (no symlink, FIFO or device) of at most ``limit`` bytes."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise LibraryError(
            f"{what}: {shown(path)} is missing; remove the task and learn it again"
        ) from None
    except OSError as e:
        raise LibraryError(
            f"{what}: cannot read {shown(path)} ({e.strerror}); check its permissions"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise LibraryError(
            f"{what}: {shown(path)} is not a regular file (a link or special file); "
            "it was refused: remove it"
        )
    if st.st_size > limit:
        raise LibraryError(
            f"{what}: {shown(path)} is {st.st_size >> 20} MB, far larger than a task file; "
            "it was refused"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise LibraryError(
            f"{what}: cannot read {shown(path)} ({e.strerror}); check its permissions"
        ) from None
    if len(data) > limit:
        raise LibraryError(
            f"{what}: {shown(path)} grew beyond {limit >> 20} MB while being read; it was refused"
        )
    return data


@contextmanager
def locked(root: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the library's file lock (``root/.lock``), or raise LibraryError after ``timeout``."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(root / ".lock"), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise LibraryError(
            f"library {shown(root)} stayed locked by another process for {timeout:.0f} s; try again"
        ) from None
    except OSError as e:
        raise LibraryError(
            f"cannot lock library {shown(root)} ({e.strerror}); check that the folder is writable"
        ) from None
    try:
        yield
    finally:
        lock.release()


def new_tmp(root: Path) -> Path:
    """A fresh temporary folder name in ``root``, registered as being written by this process."""
    tmp = root / f".tmp-{os.getpid()}-{HOST}-{uuid.uuid4().hex[:12]}"
    with _ACTIVE_LOCK:
        _ACTIVE.add(tmp.name)
    return tmp


def done_tmp(tmp: Path) -> None:
    """Remove a temporary folder (if still there) and forget it."""
    rmtree(tmp)
    with _ACTIVE_LOCK:
        _ACTIVE.discard(tmp.name)


def is_stale_tmp(p: Path) -> bool:
    """True for a ``.tmp-*`` folder no live writer owns (dead process, or very old)."""
    parts = p.name.split("-")
    try:
        pid = int(parts[1])
    except (IndexError, ValueError):
        return True
    host = parts[2] if len(parts) >= 4 else HOST
    if host == HOST:
        if pid == os.getpid():
            with _ACTIVE_LOCK:
                return p.name not in _ACTIVE
        if not pid_alive(pid):
            return True
    try:
        return time.time() - p.lstat().st_mtime > STALE_TMP_S
    except OSError:
        return False


def library_root(root: str | Path, create: bool) -> Path:
    """The absolute library folder ``root``, created if ``create``; LibraryError if it is a
    file, cannot be created or (without ``create``) does not exist."""
    path = Path(root).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise LibraryError(f"library path {shown(path)} is a file, not a folder; give a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LibraryError(
                f"cannot create library folder {shown(path)} ({e.strerror})"
            ) from None
    elif not path.is_dir():
        raise LibraryError(
            f"library folder {shown(path)} does not exist; learn a task into it first"
        )
    return path
