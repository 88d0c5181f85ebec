"""The task library: a folder with one sub-folder per task.

Layout (format version 1)::

    LIBRARY/
      casam-library.json          {"format": "casam-task-library", "format_version": 1}
      .lock                       file lock taken while the folder's entries change
      CT spleen/                  one folder per task, named by the task
        task.json                 metadata, including the SHA-256 of every weight file
        alignment.safetensors     Alignment Layer weights
        router.safetensors        VAE weights and the router features of the training images
      .tmp-<pid>-<host>-<hex>/    a write in progress (ignored; removed once its process is gone)
      .trash-<hex>-<name>/        the old version of a task during an overwrite (see below)

Safety rules (every task folder is treated as foreign input):

- Weights are only ever read with safetensors (no pickle, no code), and only after their
  SHA-256 matched the digest in ``task.json``; their tensor names and shapes must be those
  of an Alignment Layer and a VAE router. A task folder holding anything else (a pickle, a
  symbolic link, a sub-folder...) is refused with a message naming that file; other tasks
  are unaffected (:meth:`TaskLibrary.problems` lists every refused task).
- A task appears whole or not at all: it is written into a temporary folder, then renamed
  into place under the lock. An overwrite first renames the old folder to ``.trash-*``; if
  the process dies between the two renames, the next change to the library (or the next
  ``TaskLibrary``) puts the old task back. Leftovers of dead processes are removed.
- Task names never reach outside the folder (:func:`validate_name`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import threading
import time
import unicodedata
import uuid
import zipfile
import zlib
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
TASK_FILES = (META, *WEIGHT_FILES)
EXPORT_SUFFIX = ".casamtask"
RESERVED = {"sam", "auto", "none"}
#: Device names Windows will not create a file or folder for (also with an extension).
WINDOWS_DEVICES = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}
FORBIDDEN = set('/\\:*?"<>|')
MAX_NAME = 64
#: UTF-8 bytes of a name: folder names are limited to 255 bytes, and ``.trash-<hex>-`` is added.
MAX_NAME_BYTES = 200
LOCK_TIMEOUT_S = 120.0
MAX_META_BYTES = 1 << 20
MAX_WEIGHT_BYTES = 256 << 20
MAX_IMPORT_BYTES = 512 << 20
#: A ``.tmp-*`` folder older than this is a leftover whatever its process id says.
STALE_TMP_S = 6 * 3600.0
#: A task's threshold may be at most this many times the highest score of its own training
#: features under its VAE. Real tasks sit at 1-16x (a 5-fold threshold times the 1.5 margin,
#: against the final VAE); far above, the task would accept nearly any image and SAM fallback
#: could never happen.
MAX_THRESHOLD_RATIO = 1000.0
_VAE_KEYS = tuple(
    f"vae.{m}.{p}" for m in ("enc1", "enc2", "dec1", "dec2") for p in ("weight", "bias")
)

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_ACTIVE: set[str] = set()
"""Names of the temporary folders this process is writing right now."""
_ACTIVE_LOCK = threading.Lock()


def _show(x: object) -> str:
    """A path or name for a one-line message (control characters escaped)."""
    s = str(x)
    return s if s.isprintable() else repr(s)


def validate_name(name: str) -> str:
    """Return the task name (NFC-normalised) or raise InputError saying what is wrong.

    A valid name is 1..64 characters (at most 200 bytes in UTF-8) of printable text without
    ``/ \\ : * ? " < > |``, without leading or trailing spaces or dots, without ``..``, and is
    neither ``sam``, ``auto``, ``none`` nor a Windows device name; it is therefore always a
    single folder name inside the library.
    """
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
        raise InputError(
            f"task name {name!r} contains {shown}; use letters, digits, spaces and - _ . + ( ) ,"
        )
    if len(n.encode("utf-8")) > MAX_NAME_BYTES:
        raise InputError(f"task name {name!r} is too long for a folder name; use a shorter name")
    if n != n.strip():
        raise InputError(f"task name {name!r} starts or ends with a space; remove it")
    if n.startswith(".") or n.endswith(".") or ".." in n:
        raise InputError(f"task name {name!r} may not start or end with '.' or contain '..'")
    if n.lower() in RESERVED:
        raise InputError(f"task name {name!r} is reserved; choose another name")
    if n.split(".")[0].strip().lower() in WINDOWS_DEVICES:
        raise InputError(f"task name {name!r} is a device name on Windows; choose another name")
    return n


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_sha256(x: object) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


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
    def from_json(
        cls, d: dict[str, Any], path: Path | None = None, where: str | None = None
    ) -> TaskInfo:
        """Metadata from ``task.json``, with every field's type checked (it is foreign input)."""
        where = where or (_show(path / META) if path is not None else META)
        if not isinstance(d, dict):
            raise LibraryError(f"{where} is not a JSON object; task skipped")
        fields_ = {
            k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("path", "active")
        }
        missing = [
            k
            for k, f in cls.__dataclass_fields__.items()
            if k not in fields_ and k not in ("path", "active", "format_version")
        ]
        if missing:
            raise LibraryError(
                f"{where} lacks {', '.join(missing)}; task skipped (remove it and learn it again)"
            )
        problems = []
        for k in ("name", "backbone", "created"):
            if not isinstance(fields_[k], str):
                problems.append(k)
        for k in ("blocks", "n_images", "n_objects", "n_holdout", "format_version"):
            if k in fields_ and not (_is_int(fields_[k]) and fields_[k] >= 0):
                problems.append(k)
        th = fields_["threshold"]
        if not (_is_number(th) and math.isfinite(th) and th >= 0):
            problems.append("threshold")
        for k in ("iou_sam", "iou_task", "biou_sam", "biou_task"):
            if fields_[k] is not None and not _is_number(fields_[k]):
                problems.append(k)
        settings = fields_["settings"]
        if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
            problems.append("settings")
        elif "beta" in settings and not (
            _is_number(settings["beta"]) and math.isfinite(settings["beta"])
        ):
            problems.append("settings.beta")
        files = fields_["files"]
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and _is_sha256(v) for k, v in files.items()
        ):
            problems.append("files")
        if problems:
            raise LibraryError(
                f"{where} has malformed {', '.join(problems)}; task skipped (remove it and learn it again)"
            )
        return cls(**fields_, path=path)

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


def _rmtree(path: Path) -> None:
    """Remove a folder (or a symbolic link to one, without following it); ignore errors."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
            return
    except OSError:
        return
    shutil.rmtree(path, ignore_errors=True)


def _os_message(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "the disk is full; free space and try again"
    return f"{e.strerror or e}; check that the folder is writable and try again"


def _read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file (no symlink, FIFO or device) of at most ``limit`` bytes."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise LibraryError(
            f"{what}: {_show(path)} is missing; remove the task and learn it again"
        ) from None
    except OSError as e:
        raise LibraryError(
            f"{what}: cannot read {_show(path)} ({e.strerror}); check its permissions"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise LibraryError(
            f"{what}: {_show(path)} is not a regular file (a link or special file); it was refused: remove it"
        )
    if st.st_size > limit:
        raise LibraryError(
            f"{what}: {_show(path)} is {st.st_size >> 20} MB, far larger than a task file; it was refused"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise LibraryError(
            f"{what}: cannot read {_show(path)} ({e.strerror}); check its permissions"
        ) from None
    if len(data) > limit:
        raise LibraryError(
            f"{what}: {_show(path)} grew beyond {limit >> 20} MB while being read; it was refused"
        )
    return data


@functools.lru_cache(maxsize=1)
def _block_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names (without ``blocks.0.``) and shapes of one CAResBlock."""
    import torch

    from casam.alignment import AlignmentLayer

    with torch.device("meta"):
        layer = AlignmentLayer(1)
    return {k[len("blocks.0.") :]: tuple(v.shape) for k, v in layer.state_dict().items()}


def check_weights(
    info: TaskInfo, alignment: dict[str, Any], router: dict[str, Any], where: str
) -> None:
    """Raise LibraryError unless the tensors are a ``info.blocks``-block Alignment Layer and a VAE router."""
    import torch

    from casam.backbones import EMBED_DIM

    for part, state in (("alignment", alignment), ("router", router)):
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise LibraryError(
                f"{where}: the {part} weights are not a dict of named tensors; refused"
            )
    block = _block_shapes()
    if info.blocks < 1:
        raise LibraryError(
            f"{where}: its metadata gives {info.blocks} Alignment Layer blocks (at least 1); refused"
        )
    if len(alignment) != info.blocks * len(block):
        raise LibraryError(
            f"{where}: alignment.safetensors holds {len(alignment)} tensors, not the {info.blocks}-block "
            "Alignment Layer its metadata describes; refused"
        )
    for i in range(info.blocks):
        for k, shape in block.items():
            t = alignment.get(f"blocks.{i}.{k}")
            if t is None or tuple(t.shape) != shape:
                raise LibraryError(
                    f"{where}: alignment.safetensors lacks blocks.{i}.{k} of shape {shape}; refused"
                )
    missing = [k for k in (*_VAE_KEYS, "features") if k not in router]
    if missing:
        raise LibraryError(f"{where}: router.safetensors lacks {', '.join(missing)}; refused")
    g = {k: tuple(router[k].shape) for k in (*_VAE_KEYS, "features")}
    hidden, latent2 = g["vae.enc1.weight"][0], g["vae.enc2.weight"][0]
    expected = {
        "vae.enc1.weight": (hidden, EMBED_DIM),
        "vae.enc1.bias": (hidden,),
        "vae.enc2.weight": (latent2, hidden),
        "vae.enc2.bias": (latent2,),
        "vae.dec1.weight": (hidden, latent2 // 2),
        "vae.dec1.bias": (hidden,),
        "vae.dec2.weight": (EMBED_DIM, hidden),
        "vae.dec2.bias": (EMBED_DIM,),
    }
    if latent2 % 2 or latent2 == 0 or hidden == 0 or any(g[k] != s for k, s in expected.items()):
        raise LibraryError(
            f"{where}: router.safetensors does not hold a VAE on {EMBED_DIM} features; refused"
        )
    if len(g["features"]) != 2 or g["features"][1] != EMBED_DIM or g["features"][0] < 1:
        raise LibraryError(
            f"{where}: router.safetensors has features of shape {g['features']}; refused"
        )
    for part, state in (("alignment", alignment), ("router", router)):
        for k, t in state.items():
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise LibraryError(
                    f"{where}: {part} tensor {k!r} is not finite floating point; refused"
                )
    _check_threshold(info, router, where)


def _check_threshold(info: TaskInfo, router: dict[str, Any], where: str) -> None:
    """Refuse a threshold so far above the task's own scores that it would accept any image."""
    import torch

    from casam.router import vae_from_state

    beta = float(info.settings.get("beta", 16.5))
    with torch.no_grad():
        own = float(
            vae_from_state(router).neg_elbo(router["features"].float(), beta, sample=False).max()
        )
    if not math.isfinite(info.threshold) or (
        own > 0 and info.threshold > MAX_THRESHOLD_RATIO * own
    ):
        raise LibraryError(
            f"{where}: its routing threshold {info.threshold:.3g} is far above the scores of its own training "
            f"images (at most {own:.3g}), so it would take images of any kind and SAM fallback could never "
            "happen; refused. Ask for a freshly learned copy of the task"
        )


def _parse_weights(
    info: TaskInfo, raw: dict[str, bytes], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Safetensors bytes -> (alignment, router) state dicts, checked against the metadata."""
    from safetensors.torch import load

    out = []
    for fname in WEIGHT_FILES:
        try:
            out.append(load(raw[fname]))
        except Exception as e:  # noqa: BLE001 - any parser failure is the file's fault
            first = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
            raise LibraryError(
                f"{where}: {fname} is not a valid safetensors file ({first}); refused"
            ) from None
    check_weights(info, out[0], out[1], where)
    return out[0], out[1]


class TaskLibrary:
    """A folder of tasks. Safe for several processes at once (changes happen under a file lock)."""

    def __init__(self, root: str | Path | None = None, create: bool = True):
        self.root = (
            Path(root).expanduser() if root is not None else default_library_dir()
        ).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(
                f"library path {_show(self.root)} is a file, not a folder; give a folder"
            )
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LibraryError(
                    f"cannot create library folder {_show(self.root)} ({e.strerror})"
                ) from None
        elif not self.root.is_dir():
            raise LibraryError(
                f"library folder {_show(self.root)} does not exist; learn a task into it first"
            )
        self._check_format(create)
        self._tidy()

    # ---- format and locking ----------------------------------------------------------------
    def _check_format(self, create: bool) -> None:
        marker = self.root / MARKER
        if marker.is_file():
            try:
                d = json.loads(marker.read_text("utf-8"))
                version = d["format_version"]
                if not _is_int(version):
                    raise TypeError
            except (OSError, ValueError, KeyError, TypeError):
                raise LibraryError(
                    f"{_show(marker)} is unreadable; restore it or remove it to re-create it"
                ) from None
            if version > LIBRARY_FORMAT_VERSION:
                raise LibraryError(
                    f"library {_show(self.root)} has format version {version}, newer than this napari-casam "
                    f"understands ({LIBRARY_FORMAT_VERSION}); upgrade napari-casam to use it"
                )
            if version < LIBRARY_FORMAT_VERSION:
                self._migrate(version)
        elif create:
            # Format 0: a folder of task folders without a marker (e.g. copied by hand).
            self._migrate(0)

    def _migrate(self, version: int) -> None:
        """Bring a library of an older format to the current one (so far: write the marker)."""
        with self._locked():
            data = json.dumps(
                {"format": "casam-task-library", "format_version": LIBRARY_FORMAT_VERSION}, indent=1
            )
            tmp = self.root / f".{MARKER}.{os.getpid()}.tmp"
            try:
                _write_file(tmp, data.encode())
                os.replace(tmp, self.root / MARKER)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise LibraryError(
                    f"cannot write {_show(self.root / MARKER)} ({e.strerror})"
                ) from None

    @contextmanager
    def _locked(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / ".lock"), timeout=timeout)
        try:
            lock.acquire()
        except Timeout:
            raise LibraryError(
                f"library {_show(self.root)} stayed locked by another process for {timeout:.0f} s; try again"
            ) from None
        except OSError as e:
            raise LibraryError(
                f"cannot lock library {_show(self.root)} ({e.strerror}); check that the folder is writable"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _tidy(self) -> None:
        """Remove leftovers of dead processes now if nobody else is changing the library."""
        try:
            with self._locked(timeout=0):
                self._cleanup_stale()
        except (LibraryError, OSError):
            pass

    # ---- reading ---------------------------------------------------------------------------
    def _task_dirs(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except OSError as e:
            raise LibraryError(
                f"cannot read library folder {_show(self.root)} ({e.strerror})"
            ) from None
        return [p for p in entries if not p.name.startswith(".") and p.is_dir()]

    def _read_meta(self, folder: Path, name: str | None = None) -> tuple[TaskInfo, bytes]:
        """A task folder's metadata (and the raw ``task.json``), after checking its file list.

        ``name``: the task name the folder must hold (default: the folder's own name).
        """
        expect = name if name is not None else unicodedata.normalize("NFC", folder.name)
        what = f"task '{_show(expect)}'"
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            raise LibraryError(
                f"cannot read task folder {_show(folder)} ({e.strerror}); task skipped"
            ) from None
        for p in entries:
            if p.name not in TASK_FILES:
                raise LibraryError(
                    f"{what} holds an unexpected file {_show(p)} (not listed in {META}); "
                    "the task was refused: remove that file"
                )
        meta = folder / META
        if not any(p.name == META for p in entries):
            raise LibraryError(f"task folder {_show(folder)} has no {META}; remove the folder")
        raw = _read_regular(meta, MAX_META_BYTES, what)
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise LibraryError(f"{_show(meta)} is not valid JSON; {what} skipped") from None
        if not isinstance(d, dict):
            raise LibraryError(f"{_show(meta)} is not a JSON object; {what} skipped")
        version = d.get("format_version", 0)
        if not _is_int(version) or version > LIBRARY_FORMAT_VERSION:
            raise LibraryError(
                f"{what} was written by a newer napari-casam (format {version!r}, this one reads "
                f"{LIBRARY_FORMAT_VERSION}); upgrade napari-casam to use it"
            )
        info = TaskInfo.from_json(d, folder)
        if info.name != expect:
            raise LibraryError(
                f"{_show(meta)} names task {info.name!r} but its folder is {folder.name!r}; task skipped"
            )
        try:
            validate_name(expect)
        except InputError:
            raise LibraryError(
                f"task folder {_show(folder)} is not a valid task name; rename or remove it"
            ) from None
        if set(info.files) != set(WEIGHT_FILES):
            raise LibraryError(
                f"{_show(meta)} lists files {sorted(info.files)}; expected {list(WEIGHT_FILES)}; task skipped"
            )
        return info, raw

    def _read_info(self, folder: Path) -> TaskInfo:
        return self._read_meta(folder)[0]

    def _read_weights(self, info: TaskInfo) -> dict[str, bytes]:
        """The weight files' bytes, each checked against its digest in ``task.json``."""
        assert info.path is not None
        what = f"task '{info.name}'"
        data = {}
        for fname in WEIGHT_FILES:
            p = info.path / fname
            blob = _read_regular(p, MAX_WEIGHT_BYTES, what)
            if hashlib.sha256(blob).hexdigest() != info.files[fname]:
                raise LibraryError(
                    f"{_show(p)} does not match the digest in {META} (truncated, corrupted or swapped); "
                    f"{what} skipped: remove it and learn it again"
                )
            data[fname] = blob
        return data

    _verify = _read_weights

    def tasks(self, backbone: str | None = None) -> list[TaskInfo]:
        """Every task whose metadata reads (``active`` marks those of ``backbone`` when one is given)."""
        out = []
        for folder in self._task_dirs():
            try:
                info = self._read_info(folder)
            except LibraryError:
                continue
            out.append(info.with_(active=backbone is None or info.backbone == backbone))
        return out

    def scan(self, backbone: str | None = None) -> Iterator[LoadedTask | str]:
        """Every task folder, read and verified once: a LoadedTask for each task of ``backbone``
        (of any backbone when None), or one line saying why a task cannot be used. A generator,
        so only one task's weights are in memory at a time."""
        for folder in self._task_dirs():
            try:
                info = self._read_info(folder)
                align, router = _parse_weights(
                    info, self._read_weights(info), f"task '{info.name}'"
                )
            except LibraryError as e:
                yield str(e)
                continue
            if backbone is None or info.backbone == backbone:
                yield LoadedTask(info.with_(active=True), align, router)

    def problems(self) -> list[str]:
        """One line per task that cannot be used (metadata, unexpected files, digests, weights)."""
        return [item for item in self.scan() if isinstance(item, str)]

    check = problems

    def names(self) -> list[str]:
        return [t.name for t in self.tasks()]

    def __contains__(self, name: object) -> bool:
        try:
            n = validate_name(name)  # type: ignore[arg-type]
        except InputError:
            return False
        return (self.root / n).is_dir() and n in self.names()

    def info(self, name: str) -> TaskInfo:
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            raise LibraryError(f"no task named '{name}' in {_show(self.root)}; see `casam tasks`")
        return self._read_info(folder)

    def load(self, name: str) -> LoadedTask:
        """Read and verify one task's weights (digests, then safetensors, then tensor shapes)."""
        info = self.info(name)
        align, router = _parse_weights(info, self._read_weights(info), f"task '{info.name}'")
        return LoadedTask(info, align, router)

    # ---- writing ---------------------------------------------------------------------------
    def _new_tmp(self) -> Path:
        tmp = self.root / f".tmp-{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:12]}"
        with _ACTIVE_LOCK:
            _ACTIVE.add(tmp.name)
        return tmp

    @staticmethod
    def _done_tmp(tmp: Path) -> None:
        _rmtree(tmp)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(tmp.name)

    def _is_stale_tmp(self, p: Path) -> bool:
        parts = p.name.split("-")
        try:
            pid = int(parts[1])
        except (IndexError, ValueError):
            return True
        host = parts[2] if len(parts) >= 4 else _HOST
        if host == _HOST:
            if pid == os.getpid():
                with _ACTIVE_LOCK:
                    return p.name not in _ACTIVE
            if not _pid_alive(pid):
                return True
        try:
            return time.time() - p.lstat().st_mtime > STALE_TMP_S
        except OSError:
            return False

    def _whole_task(self, folder: Path, name: str) -> bool:
        """True if ``folder`` holds a complete, verified task named ``name``."""
        try:
            info, _ = self._read_meta(folder, name)
            _parse_weights(info, self._read_weights(info), f"task '{name}'")
        except (LibraryError, InputError):
            return False
        return True

    def _cleanup_stale(self) -> None:
        """Under the lock: remove writes of dead processes; finish or undo interrupted overwrites."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for p in entries:
            if p.name.startswith(".tmp-") and self._is_stale_tmp(p):
                _rmtree(p)
            elif p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp"):
                pid = p.name[len(MARKER) + 2 : -4]
                if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                    p.unlink(missing_ok=True)
        for p in entries:
            if not p.name.startswith(".trash-"):
                continue
            # Trash folders are made and removed under the lock, so one seen here was left by a
            # process that died during an overwrite. If it died between its two renames, the
            # task is missing: put the old version back (if it is whole).
            name = unicodedata.normalize("NFC", p.name.split("-", 2)[-1])
            target = self.root / name
            if (
                not p.is_symlink()
                and not target.exists()
                and not target.is_symlink()
                and self._whole_task(p, name)
            ):
                try:
                    os.replace(p, target)
                    _fsync_dir(self.root)
                    continue
                except OSError:
                    pass
            _rmtree(p)

    def _refuse_case_twin(self, name: str) -> None:
        """Names that differ only in case are one folder on macOS and Windows, so a library
        that holds both could not be copied there: refuse the second one everywhere."""
        key = name.casefold()
        for folder in self._task_dirs():
            if folder.name != name and folder.name.casefold() == key:
                raise TaskExistsError(
                    f"task '{folder.name}' already exists in {_show(self.root)} and '{name}' differs from it "
                    "only in upper/lower case, which macOS and Windows treat as the same name; choose another name"
                )

    def ensure_free(self, name: str) -> None:
        """Raise TaskExistsError early (before minutes of training) if ``name`` is taken."""
        name = validate_name(name)
        target = self.root / name
        self._refuse_case_twin(name)
        if target.exists() or target.is_symlink():
            raise TaskExistsError(
                f"task '{name}' already exists in {_show(self.root)}; choose another name or retrain it"
            )

    def save(
        self,
        info: TaskInfo,
        alignment: dict[str, Any],
        router: dict[str, Any],
        overwrite: bool = False,
    ) -> TaskInfo:
        """Write a task atomically (whole or not at all). ``info.files`` is filled in here.

        Raises TaskExistsError if the name is taken (unless ``overwrite``), LibraryError if
        the weights are not an Alignment Layer and a VAE router or the disk is full; in every
        failure the library is left as it was.
        """
        from safetensors.torch import save

        name = validate_name(info.name)
        check_weights(info, alignment, router, f"task '{name}'")
        if not overwrite:
            self.ensure_free(name)
        tmp = self._new_tmp()
        try:
            tmp.mkdir()
            files = {}
            for fname, state in (
                ("alignment.safetensors", alignment),
                ("router.safetensors", router),
            ):
                blob = save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})
                _write_file(tmp / fname, blob)
                files[fname] = hashlib.sha256(blob).hexdigest()
            final = info.with_(
                name=name, files=files, format_version=LIBRARY_FORMAT_VERSION, path=None
            )
            _write_file(tmp / META, json.dumps(final.to_json(), indent=2).encode("utf-8"))
            _fsync_dir(tmp)
            with self._locked():
                self._commit(tmp, name, overwrite)
        except OSError as e:
            raise LibraryError(
                f"could not save task '{name}' to {_show(self.root)}: {_os_message(e)} "
                "(nothing in the library was changed)"
            ) from None
        finally:
            self._done_tmp(tmp)
        return final.with_(path=self.root / name)

    def _commit(self, tmp: Path, name: str, overwrite: bool) -> None:
        """Under the lock: move a finished temporary folder into place."""
        self._cleanup_stale()
        target = self.root / name
        self._refuse_case_twin(name)
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise TaskExistsError(
                    f"task '{name}' already exists in {_show(self.root)}; choose another name"
                )
            trash = self.root / f".trash-{uuid.uuid4().hex[:8]}-{name}"
            os.replace(target, trash)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(trash, target)
                raise
            _fsync_dir(self.root)
            _rmtree(trash)
        else:
            os.replace(tmp, target)
        _fsync_dir(self.root)

    def remove(self, name: str) -> None:
        """Delete a task (also a broken one). Raises LibraryError if there is none of that name."""
        name = validate_name(name)
        target = self.root / name
        with self._locked():
            self._cleanup_stale()
            if not target.is_dir():
                raise LibraryError(
                    f"no task named '{name}' in {_show(self.root)}; see `casam tasks`"
                )
            gone = self._new_tmp()
            try:
                os.replace(target, gone)
                _fsync_dir(self.root)
            except OSError as e:
                raise LibraryError(f"could not remove task '{name}': {_os_message(e)}") from None
            finally:
                self._done_tmp(gone)

    def rename(self, old: str, new: str) -> TaskInfo:
        """Give a task a new name (its weights are copied as they are, then the old name goes)."""
        old, new = validate_name(old), validate_name(new)
        src = self.root / old
        if not src.is_dir():
            raise LibraryError(f"no task named '{old}' in {_show(self.root)}; see `casam tasks`")
        info, meta_raw = self._read_meta(src)
        raw = self._read_weights(info)
        _parse_weights(info, raw, f"task '{old}'")
        if old == new:
            return info
        self.ensure_free(new)
        final = info.with_(name=new, path=None)
        tmp = self._new_tmp()
        try:
            tmp.mkdir()
            for fname, blob in raw.items():
                _write_file(tmp / fname, blob)
            _write_file(tmp / META, json.dumps(final.to_json(), indent=2).encode("utf-8"))
            _fsync_dir(tmp)
            with self._locked():
                self._cleanup_stale()
                try:
                    unchanged = (src / META).read_bytes() == meta_raw
                except OSError:
                    unchanged = False
                if not unchanged:
                    raise LibraryError(
                        f"task '{old}' was changed by another process while being renamed; try again"
                    )
                self._commit(tmp, new, overwrite=False)
                gone = self._new_tmp()
                try:
                    os.replace(src, gone)
                    _fsync_dir(self.root)
                finally:
                    self._done_tmp(gone)
        except OSError as e:
            raise LibraryError(
                f"could not rename task '{old}' to '{new}': {_os_message(e)}"
            ) from None
        finally:
            self._done_tmp(tmp)
        return final.with_(path=self.root / new)

    # ---- exchange between sites ------------------------------------------------------------
    def export(self, name: str, dest: str | Path) -> Path:
        """Write one task as a single ``.casamtask`` file (a zip of its three files)."""
        name = validate_name(name)
        folder = self.root / name
        if not folder.is_dir():
            raise LibraryError(f"no task named '{name}' in {_show(self.root)}; see `casam tasks`")
        info, meta_raw = self._read_meta(folder)
        raw = self._read_weights(info)
        _parse_weights(info, raw, f"task '{name}'")
        dest = Path(dest).expanduser()
        if dest.is_dir():
            dest = dest / f"{info.name}{EXPORT_SUFFIX}"
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(META, meta_raw)
                for fname in WEIGHT_FILES:
                    z.writestr(fname, raw[fname])
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LibraryError(f"cannot write {_show(dest)}: {_os_message(e)}") from None
        return dest

    @staticmethod
    def _read_package(src: Path) -> dict[str, bytes]:
        """The three files of a ``.casamtask`` zip or a task folder, refusing anything else."""
        limits = {META: MAX_META_BYTES, **{f: MAX_WEIGHT_BYTES for f in WEIGHT_FILES}}
        blobs: dict[str, bytes] = {}
        if src.is_dir():
            try:
                entries = sorted(src.iterdir())
            except OSError as e:
                raise LibraryError(f"cannot read {_show(src)} ({e.strerror})") from None
            for p in entries:
                if p.name not in TASK_FILES:
                    raise LibraryError(
                        f"{_show(p)} is not part of a task ({', '.join(TASK_FILES)}); refused"
                    )
                blobs[p.name] = _read_regular(p, limits[p.name], _show(src))
            return blobs
        if not src.is_file():
            raise InputError(
                f"{_show(src)} does not exist; give a {EXPORT_SUFFIX} file or a task folder"
            )
        try:
            with zipfile.ZipFile(src) as z:
                members = z.infolist()
                total = 0
                for m in members:
                    if m.filename not in TASK_FILES:
                        raise LibraryError(
                            f"{_show(src)} holds {m.filename!r}, which is not part of a task; refused"
                        )
                    if m.filename in blobs:
                        raise LibraryError(f"{_show(src)} holds {m.filename!r} twice; refused")
                    limit = limits[m.filename]
                    if m.file_size > limit:
                        raise LibraryError(
                            f"{_show(src)}: {m.filename} unpacks to {m.file_size >> 20} MB, far more than a task; refused"
                        )
                    with z.open(m) as f:
                        data = f.read(limit + 1)
                    total += len(data)
                    if len(data) > limit or total > MAX_IMPORT_BYTES:
                        raise LibraryError(
                            f"{_show(src)}: {m.filename} unpacks to more than a task can hold; refused"
                        )
                    blobs[m.filename] = data
        except LibraryError:
            raise
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            RuntimeError,
            NotImplementedError,
            ValueError,
        ) as e:
            raise LibraryError(
                f"{_show(src)} is not a readable {EXPORT_SUFFIX} file ({type(e).__name__}); export it again"
            ) from None
        except OSError as e:
            raise LibraryError(
                f"cannot read {_show(src)} ({e.strerror or e}); check the file"
            ) from None
        return blobs

    def import_task(
        self, src: str | Path, name: str | None = None, overwrite: bool = False
    ) -> TaskInfo:
        """Add a task from a ``.casamtask`` file or a task folder (verified before it lands)."""
        src = Path(src).expanduser()
        where = _show(src)
        blobs = self._read_package(src)
        if set(blobs) != set(TASK_FILES):
            raise LibraryError(
                f"{where} lacks {', '.join(sorted(set(TASK_FILES) - set(blobs)))}; it is not a whole task"
            )
        try:
            d = json.loads(blobs[META].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise LibraryError(f"{where}: {META} is not valid JSON; refused") from None
        version = d.get("format_version", 0) if isinstance(d, dict) else 0
        if not _is_int(version) or version > LIBRARY_FORMAT_VERSION:
            raise LibraryError(
                f"{where} was written by a newer napari-casam (format {version!r}); upgrade napari-casam"
            )
        info = TaskInfo.from_json(d, where=f"{where}: {META}")
        if set(info.files) != set(WEIGHT_FILES):
            raise LibraryError(
                f"{where}: {META} lists files {sorted(info.files)}; expected {list(WEIGHT_FILES)}"
            )
        for fname in WEIGHT_FILES:
            if hashlib.sha256(blobs[fname]).hexdigest() != info.files[fname]:
                raise LibraryError(
                    f"{where}: {fname} does not match its digest in {META} (corrupted); refused"
                )
        align, router = _parse_weights(info, blobs, where)
        new_name = name if name is not None else info.name
        try:
            validate_name(new_name)
        except InputError as e:
            if name is not None:
                raise
            raise LibraryError(
                f"{where}: its task name is not valid here ({e}); import it under another name"
            ) from None
        return self.save(info.with_(name=new_name, path=None), align, router, overwrite=overwrite)


def new_task_info(name: str, **fields_: Any) -> TaskInfo:
    return TaskInfo(name=name, created=_now(), files={}, **fields_)
