"""Exchange between sites: a task as one ``.casamtask`` file (a zip of its three files).

Reading a package is as careful as reading a library folder (it is foreign input): only the
three task files, each within its size limit (also against zip bombs and lying headers), then
the same parser as the library (:func:`casam.library.format.parse_task`).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from casam.errors import InputError, LibraryError
from casam.library import format as fmt
from casam.library import fs
from casam.library.names import shown, validate_name

_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


def export_task(name: str, meta_raw: bytes, weights: dict[str, bytes], dest: str | Path) -> Path:
    """Write a verified task's files as ``dest`` (or ``dest/<name>.casamtask`` for a folder)."""
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{name}{fmt.EXPORT_SUFFIX}"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(fmt.META, meta_raw)
            for fname in fmt.WEIGHT_FILES:
                z.writestr(fname, weights[fname])
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LibraryError(f"cannot write {shown(dest)}: {fs.os_message(e)}") from None
    return dest


def _limits() -> dict[str, int]:
    return {fmt.META: fmt.MAX_META_BYTES, **{f: fmt.MAX_WEIGHT_BYTES for f in fmt.WEIGHT_FILES}}


def _read_folder(src: Path) -> dict[str, bytes]:
    try:
        entries = sorted(src.iterdir())
    except OSError as e:
        raise LibraryError(f"cannot read {shown(src)} ({e.strerror})") from None
    blobs = {}
    for p in entries:
        if p.name not in fmt.TASK_FILES:
            raise LibraryError(
                f"{shown(p)} is not part of a task ({', '.join(fmt.TASK_FILES)}); refused"
            )
        blobs[p.name] = fs.read_regular(p, _limits()[p.name], shown(src))
    return blobs


def _read_zip(src: Path) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    total = 0
    with zipfile.ZipFile(src) as z:
        for m in z.infolist():
            if m.filename not in fmt.TASK_FILES:
                raise LibraryError(
                    f"{shown(src)} holds {m.filename!r}, which is not part of a task; refused"
                )
            if m.filename in blobs:
                raise LibraryError(f"{shown(src)} holds {m.filename!r} twice; refused")
            limit = _limits()[m.filename]
            if m.file_size > limit:
                raise LibraryError(
                    f"{shown(src)}: {m.filename} unpacks to {m.file_size >> 20} MB, far more "
                    "than a task; refused"
                )
            with z.open(m) as f:
                data = f.read(limit + 1)
            total += len(data)
            if len(data) > limit or total > fmt.MAX_IMPORT_BYTES:
                raise LibraryError(
                    f"{shown(src)}: {m.filename} unpacks to more than a task can hold; refused"
                )
            blobs[m.filename] = data
    return blobs


def read_package(src: Path) -> dict[str, bytes]:
    """The three files of a ``.casamtask`` zip or a task folder, refusing anything else."""
    if src.is_dir():
        blobs = _read_folder(src)
    elif not src.is_file():
        raise InputError(
            f"{shown(src)} does not exist; give a {fmt.EXPORT_SUFFIX} file or a task folder"
        )
    else:
        try:
            blobs = _read_zip(src)
        except LibraryError:
            raise
        except _ZIP_ERRORS as e:
            raise LibraryError(
                f"{shown(src)} is not a readable {fmt.EXPORT_SUFFIX} file ({type(e).__name__}); "
                "export it again"
            ) from None
        except OSError as e:
            raise LibraryError(
                f"cannot read {shown(src)} ({e.strerror or e}); check the file"
            ) from None
    if set(blobs) != set(fmt.TASK_FILES):
        missing = ", ".join(sorted(set(fmt.TASK_FILES) - set(blobs)))
        raise LibraryError(f"{shown(src)} lacks {missing}; it is not a whole task")
    return blobs


def read_task(src: Path, name: str | None = None) -> fmt.LoadedTask:
    """A verified task from a package or folder, named ``name`` (default: its own name)."""
    where = shown(src)
    blobs = read_package(src)
    info = fmt.parse_meta(blobs[fmt.META], f"{where}: {fmt.META}")
    task = fmt.parse_task(info, blobs, where)
    new_name = name if name is not None else info.name
    try:
        validate_name(new_name)
    except InputError as e:
        if name is not None:
            raise
        raise LibraryError(
            f"{where}: its task name is not valid here ({e}); import it under another name"
        ) from None
    task.info = info.with_(name=new_name, path=None)
    return task
