"""The task library: a folder with one sub-folder per task.

Layout (format version 1)::

    LIBRARY/
      casam-library.json          {"format": "casam-task-library", "format_version": 1}
      .lock                       file lock taken while the folder's entries change
      CT spleen/                  one folder per task, named by the task
        task.json                 metadata, including the SHA-256 of every weight file
        alignment.safetensors     Alignment Layer weights
        router.safetensors        VAE weights and the router features of the training images
      .tmp-<pid>-<hex>/           a write in progress (ignored; removed once its process is gone)

Weights are only ever read with safetensors (no pickle, no code). A task appears whole or not
at all: it is written into a temporary folder, then renamed into place under the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from casam.config import LIBRARY_FORMAT_VERSION, default_library_dir
from casam.errors import InputError, LibraryError, TaskExistsError

MARKER = "casam-library.json"
META = "task.json"
WEIGHT_FILES = ("alignment.safetensors", "router.safetensors")
EXPORT_SUFFIX = ".casamtask"
RESERVED = {"sam", "auto", "none", "con", "prn", "aux", "nul"}
FORBIDDEN = set('/\\:*?"<>|')
MAX_NAME = 64
LOCK_TIMEOUT_S = 120.0
MAX_IMPORT_BYTES = 512 << 20


def validate_name(name: str) -> str:
    """Return the task name (NFC-normalised) or raise InputError saying what is wrong."""
    if not isinstance(name, str):
        raise InputError(f"task name must be text, got {type(name).__name__}")
    n = unicodedata.normalize("NFC", name)
    if not n.strip():
        raise InputError("task name is empty; give a name such as 'CT spleen'")
    if len(n) > MAX_NAME:
        raise InputError(f"task name is {len(n)} characters long; use at most {MAX_NAME}")
    bad = sorted({c for c in n if c in FORBIDDEN or not c.isprintable()})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InputError(f"task name {name!r} contains {shown}; use letters, digits, spaces and - _ . + ( ) ,")
    if n != n.strip():
        raise InputError(f"task name {name!r} starts or ends with a space; remove it")
    if n.startswith(".") or n.endswith(".") or ".." in n:
        raise InputError(f"task name {name!r} may not start or end with '.' or contain '..'")
    if n.lower() in RESERVED:
        raise InputError(f"task name {name!r} is reserved; choose another name")
    return n


@dataclass(frozen=True)
class TaskInfo:
    """Metadata of one task, as stored in its ``task.json``."""

    name: str
    backbone: str
    threshold: float
    blocks: int
    n_images: int
    n_objects: int
    iou_sam: float | None
    iou_task: float | None
    biou_sam: float | None
    biou_task: float | None
    n_holdout: int
    created: str
    settings: dict[str, Any]
    files: dict[str, str]
    format_version: int = LIBRARY_FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)
    active: bool = field(default=True, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("path", "active")}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path | None = None) -> TaskInfo:
        fields_ = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("path", "active")}
        try:
            info = cls(**fields_, path=path)
        except TypeError as e:
            raise LibraryError(f"task metadata {path / META if path else ''} is incomplete ({e})") from None
        if not isinstance(info.files, dict) or not isinstance(info.threshold, (int, float)):
            raise LibraryError(f"task metadata {path / META if path else ''} is malformed")
        return info

    def with_(self, **changes: Any) -> TaskInfo:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(changes)
        return TaskInfo(**d)

    @property
    def iou_gain(self) -> float | None:
        if self.iou_sam is None or self.iou_task is None:
            return None
        return self.iou_task - self.iou_sam


@dataclass
class LoadedTask:
    info: TaskInfo
    alignment: dict[str, Any]
    router: dict[str, Any]


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
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


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class TaskLibrary:
    """A folder of tasks. Safe for several processes at once (changes happen under a file lock)."""

    def __init__(self, root: str | Path | None = None, create: bool = True):
        self.root = Path(root).expanduser() if root is not None else default_library_dir()
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"library path {self.root} is a file, not a folder; give a folder")
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LibraryError(f"cannot create library folder {self.root} ({e.strerror})") from None
        elif not self.root.is_dir():
            raise LibraryError(f"library folder {self.root} does not exist; learn a task into it first")
        self._check_format(create)

    # ---- format and locking ----------------------------------------------------------------
    def _check_format(self, create: bool) -> None:
        marker = self.root / MARKER
        if marker.is_file():
            try:
                d = json.loads(marker.read_text("utf-8"))
                version = int(d["format_version"])
            except (OSError, ValueError, KeyError, TypeError):
                raise LibraryError(f"{marker} is unreadable; restore it or remove it to re-create it") from None
            if version > LIBRARY_FORMAT_VERSION:
                raise LibraryError(
                    f"library {self.root} has format version {version}, newer than this napari-casam "
                    f"understands ({LIBRARY_FORMAT_VERSION}); upgrade napari-casam to use it"
                )
            if version < LIBRARY_FORMAT_VERSION:
                self._migrate(version)
        elif create:
            # Format 0: a folder of task folders without a marker (e.g. copied by hand).
            self._migrate(0)

    def _migrate(self, version: int) -> None:
        with self._locked():
            data = json.dumps({"format": "casam-task-library", "format_version": LIBRARY_FORMAT_VERSION}, indent=1)
            tmp = self.root / f".{MARKER}.{os.getpid()}.tmp"
            try:
                _write_file(tmp, data.encode())
                os.replace(tmp, self.root / MARKER)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise LibraryError(f"cannot write {self.root / MARKER} ({e.strerror})") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / ".lock"), timeout=LOCK_TIMEOUT_S)
        try:
            with lock:
                yield
        except Timeout:
            raise LibraryError(
                f"library {self.root} stayed locked by another process for {LOCK_TIMEOUT_S:.0f} s; try again"
            ) from None

    # ---- reading ---------------------------------------------------------------------------
    def _task_dirs(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except OSError as e:
            raise LibraryError(f"cannot read library folder {self.root} ({e.strerror})") from None
        return [p for p in entries if p.is_dir() and not p.name.startswith(".")]

    def _read_info(self, folder: Path) -> TaskInfo:
        meta = folder / META
        try:
            d = json.loads(meta.read_text("utf-8"))
        except FileNotFoundError:
            raise LibraryError(f"task folder {folder} has no {META}; remove the folder") from None
        except (OSError, ValueError):
            raise LibraryError(f"{meta} is not valid JSON; task '{folder.name}' skipped") from None
        if not isinstance(d, dict):
            raise LibraryError(f"{meta} is not a JSON object; task '{folder.name}' skipped")
        version = d.get("format_version", 0)
        if not isinstance(version, int) or version > LIBRARY_FORMAT_VERSION:
            raise LibraryError(
                f"task '{folder.name}' was written by a newer napari-casam (format {version}); upgrade to use it"
            )
        info = TaskInfo.from_json(d, folder)
        if info.name != folder.name:
            raise LibraryError(f"{meta} names task '{info.name}' but its folder is '{folder.name}'; task skipped")
        expected = set(info.files) | {META}
        if set(info.files) != set(WEIGHT_FILES):
            raise LibraryError(f"{meta} lists files {sorted(info.files)}; expected {list(WEIGHT_FILES)}")
        for p in sorted(folder.iterdir()):
            if p.name not in expected:
                raise LibraryError(
                    f"task '{folder.name}' holds an unexpected file {p} (not listed in {META}); "
                    "it was refused: remove that file"
                )
        return info

    def tasks(self, backbone: str | None = None) -> list[TaskInfo]:
        """Every readable task (``active`` marks those of ``backbone`` when one is given)."""
        out = []
        for folder in self._task_dirs():
            try:
                info = self._read_info(folder)
            except LibraryError:
                continue
            out.append(info.with_(active=backbone is None or info.backbone == backbone))
        return out

    def problems(self) -> list[str]:
        """One message per task that cannot be used (metadata, unexpected files, digests)."""
        msgs = []
        for folder in self._task_dirs():
            try:
                info = self._read_info(folder)
                self._verify(info)
            except LibraryError as e:
                msgs.append(str(e))
        return msgs

    check = problems

    def names(self) -> list[str]:
        return [t.name for t in self.tasks()]

    def __contains__(self, name: str) -> bool:
        return (self.root / name).is_dir() and name in self.names()

    def info(self, name: str) -> TaskInfo:
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            raise LibraryError(f"no task named '{name}' in {self.root}; see `casam tasks`")
        return self._read_info(folder)

    def _verify(self, info: TaskInfo) -> dict[str, bytes]:
        from casam.backbones import file_sha256

        assert info.path is not None
        data = {}
        for fname, digest in info.files.items():
            p = info.path / fname
            if not p.is_file():
                raise LibraryError(f"task '{info.name}' is missing {p}; remove the task and learn it again")
            if file_sha256(p) != digest:
                raise LibraryError(
                    f"{p} does not match the digest in {META} (truncated, corrupted or swapped); task '{info.name}' skipped"
                )
            data[fname] = p.read_bytes()
        return data

    def load(self, name: str) -> LoadedTask:
        """Read and verify one task's weights (safetensors only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        info = self.info(name)
        raw = self._verify(info)
        try:
            align = load(raw["alignment.safetensors"])
            router = load(raw["router.safetensors"])
        except (SafetensorError, ValueError, OSError) as e:
            raise LibraryError(f"task '{name}': a weight file is not valid safetensors ({e}); task skipped") from None
        return LoadedTask(info, align, router)

    # ---- writing ---------------------------------------------------------------------------
    def _cleanup_stale(self) -> None:
        for p in self.root.glob(".tmp-*"):
            try:
                pid = int(p.name.split("-")[1])
            except (IndexError, ValueError):
                pid = -1
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".trash-*"):
            name = p.name.split("-", 2)[-1]
            if not (self.root / name).exists() and (p / META).is_file():
                os.replace(p, self.root / name)  # an interrupted replace: put the old task back
            else:
                shutil.rmtree(p, ignore_errors=True)

    def ensure_free(self, name: str) -> None:
        """Raise TaskExistsError early (before minutes of training) if ``name`` is taken."""
        name = validate_name(name)
        if (self.root / name).exists():
            raise TaskExistsError(f"task '{name}' already exists in {self.root}; choose another name or retrain it")

    def save(self, info: TaskInfo, alignment: dict[str, Any], router: dict[str, Any], overwrite: bool = False) -> TaskInfo:
        """Write a task atomically. ``info.files`` is filled in here."""
        from safetensors.torch import save

        from casam.backbones import file_sha256

        name = validate_name(info.name)
        if not overwrite:
            self.ensure_free(name)
        tmp = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            tmp.mkdir()
            files = {}
            for fname, state in (("alignment.safetensors", alignment), ("router.safetensors", router)):
                blob = save({k: v.detach().contiguous().cpu() for k, v in state.items()})
                _write_file(tmp / fname, blob)
                files[fname] = file_sha256(tmp / fname)
            final = info.with_(name=name, files=files, format_version=LIBRARY_FORMAT_VERSION, path=None)
            _write_file(tmp / META, json.dumps(final.to_json(), indent=2).encode("utf-8"))
            _fsync_dir(tmp)
            with self._locked():
                self._commit(tmp, name, overwrite)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            what = "the disk is full" if e.errno == 28 else (e.strerror or str(e))
            raise LibraryError(
                f"could not save task '{name}' to {self.root}: {what}; free space and learn it again "
                "(nothing in the library was changed)"
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.info(name)

    def _commit(self, tmp: Path, name: str, overwrite: bool) -> None:
        target = self.root / name
        if target.exists():
            if not overwrite:
                raise TaskExistsError(f"task '{name}' already exists in {self.root}; choose another name")
            trash = self.root / f".trash-{uuid.uuid4().hex[:8]}-{name}"
            os.replace(target, trash)
            os.replace(tmp, target)
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
            _fsync_dir(self.root)
        self._cleanup_stale()

    def remove(self, name: str) -> None:
        name = validate_name(name)
        target = self.root / name
        with self._locked():
            if not target.is_dir():
                raise LibraryError(f"no task named '{name}' in {self.root}; see `casam tasks`")
            trash = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            os.replace(target, trash)
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)

    def rename(self, old: str, new: str) -> TaskInfo:
        old, new = validate_name(old), validate_name(new)
        loaded = self.load(old)
        if old == new:
            return loaded.info
        self.ensure_free(new)
        info = self.save(loaded.info.with_(name=new), loaded.alignment, loaded.router)
        self.remove(old)
        return info

    # ---- exchange between sites ------------------------------------------------------------
    def export(self, name: str, dest: str | Path) -> Path:
        """Write one task as a single ``.casamtask`` file (a zip of its folder)."""
        info = self.info(name)
        self._verify(info)
        dest = Path(dest).expanduser()
        if dest.is_dir():
            dest = dest / f"{info.name}{EXPORT_SUFFIX}"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for fname in (META, *WEIGHT_FILES):
                    z.write(info.path / fname, fname)
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LibraryError(f"cannot write {dest} ({e.strerror})") from None
        return dest

    def import_task(self, src: str | Path, name: str | None = None, overwrite: bool = False) -> TaskInfo:
        """Add a task from a ``.casamtask`` file or a task folder (verified before it lands)."""
        import hashlib

        from safetensors import SafetensorError
        from safetensors.torch import load

        src = Path(src).expanduser()
        blobs: dict[str, bytes] = {}
        if src.is_dir():
            for p in src.iterdir():
                if p.name not in (META, *WEIGHT_FILES):
                    raise LibraryError(f"{p} is not part of a task ({META} + {', '.join(WEIGHT_FILES)}); refused")
                blobs[p.name] = p.read_bytes()
        elif zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as z:
                for m in z.infolist():
                    if m.filename not in (META, *WEIGHT_FILES) or m.file_size > MAX_IMPORT_BYTES:
                        raise LibraryError(f"{src} holds {m.filename!r}, which is not part of a task; refused")
                    blobs[m.filename] = z.read(m)
        else:
            raise InputError(f"{src} is neither a {EXPORT_SUFFIX} file nor a task folder")
        if set(blobs) != {META, *WEIGHT_FILES}:
            raise LibraryError(f"{src} lacks {sorted({META, *WEIGHT_FILES} - set(blobs))}; it is not a whole task")
        try:
            d = json.loads(blobs[META])
        except ValueError:
            raise LibraryError(f"{src}: {META} is not valid JSON") from None
        info = TaskInfo.from_json(d)
        if info.format_version > LIBRARY_FORMAT_VERSION:
            raise LibraryError(f"{src} was written by a newer napari-casam (format {info.format_version}); upgrade")
        for fname in WEIGHT_FILES:
            if hashlib.sha256(blobs[fname]).hexdigest() != info.files.get(fname):
                raise LibraryError(f"{src}: {fname} does not match its digest in {META} (corrupted); refused")
        try:
            align, router = load(blobs["alignment.safetensors"]), load(blobs["router.safetensors"])
        except (SafetensorError, ValueError) as e:
            raise LibraryError(f"{src}: weights are not valid safetensors ({e}); refused") from None
        return self.save(info.with_(name=name or info.name), align, router, overwrite=overwrite)


def new_task_info(name: str, **fields_: Any) -> TaskInfo:
    return TaskInfo(name=name, created=_now(), files={}, **fields_)
