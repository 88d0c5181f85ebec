"""The task library: a folder with one sub-folder per task.

Layout (format version 1)::

    LIBRARY/
      casam-library.json          {"format": "casam-task-library", "format_version": 1}
      .lock                       file lock taken while the folder's entries change
      CT spleen/                  one folder per task, named by the task
        task.json                 metadata, including the SHA-256 of every weight file
        alignment.safetensors     the adapter: Alignment Layer, or decoder adapters (task.json's
                                  "adapter": "decoder", task format 3)
        router.safetensors        VAE weights and the router features of the training images
      .tmp-<pid>-<host>-<hex>/    a write in progress (ignored; removed once its process is gone)
      .trash-<hex>-<name>/        the old version of a task during an overwrite (see below)

Safety rules (every task folder is treated as foreign input):

- Weights are only ever read with safetensors (no pickle, no code), and only after their
  SHA-256 matched the digest in ``task.json``; their tensor names and shapes must be those
  of the task's adapter kind (Alignment Layer or decoder adapters) and a VAE router. A task
  folder holding anything else (a pickle, a symbolic link, a sub-folder...) is refused with a
  message naming that file; other tasks are unaffected (:meth:`TaskLibrary.problems` lists
  every refused task).
- A task appears whole or not at all: it is written into a temporary folder, then renamed
  into place under the lock. An overwrite first renames the old folder to ``.trash-*``; if
  the process dies between the two renames, the next change to the library (or the next
  ``TaskLibrary``) puts the old task back. Leftovers of dead processes are removed.
- Task names never reach outside the folder (:func:`validate_name`).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from casam import task_tensors as tt
from casam.config import default_library_dir
from casam.errors import InputError, LibraryError, TaskExistsError
from casam.library import fs
from casam.library.format import (
    MAX_META_BYTES,
    MAX_WEIGHT_BYTES,
    META,
    TASK_FILES,
    WEIGHT_FILES,
    LoadedTask,
    TaskInfo,
    check_against,
    format_of,
    parse_meta,
    parse_task,
)
from casam.library.names import shown, validate_name
from casam.library.recovery import check_format, cleanup_stale


class TaskLibrary:
    """A folder of tasks. Safe for several processes at once (changes happen under a file lock)."""

    def __init__(
        self, root: str | Path | None = None, create: bool = True, read_only: bool = False
    ):
        """``read_only``: never create, tidy or lock (a batch worker only reads tasks)."""
        create = create and not read_only
        self.root = fs.library_root(root if root is not None else default_library_dir(), create)
        check_format(self.root, create)
        if not read_only:
            self._tidy()

    # ---- format and locking ----------------------------------------------------------------
    @contextmanager
    def _locked(self, timeout: float = fs.LOCK_TIMEOUT_S) -> Iterator[None]:
        with fs.locked(self.root, timeout):
            yield

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
                f"cannot read library folder {shown(self.root)} ({e.strerror})"
            ) from None
        return [p for p in entries if not p.name.startswith(".") and p.is_dir()]

    def _read_meta(self, folder: Path, name: str | None = None) -> tuple[TaskInfo, bytes]:
        """A task folder's metadata (and the raw ``task.json``), after checking its file list.

        ``name``: the task name the folder must hold (default: the folder's own name).
        """
        expect = name if name is not None else unicodedata.normalize("NFC", folder.name)
        what = f"task '{shown(expect)}'"
        try:
            entries = sorted(folder.iterdir())
        except OSError as e:
            raise LibraryError(
                f"cannot read task folder {shown(folder)} ({e.strerror}); task skipped"
            ) from None
        for p in entries:
            if p.name not in TASK_FILES:
                raise LibraryError(
                    f"{what} holds an unexpected file {shown(p)} (not listed in {META}); "
                    "the task was refused: remove that file"
                )
        meta = folder / META
        if not any(p.name == META for p in entries):
            raise LibraryError(f"task folder {shown(folder)} has no {META}; remove the folder")
        raw = fs.read_regular(meta, MAX_META_BYTES, what)
        info = parse_meta(raw, f"{what}: {shown(meta)}", folder)
        if info.name != expect:
            raise LibraryError(
                f"{shown(meta)} names task {info.name!r} but its folder is {folder.name!r}; "
                "task skipped"
            )
        try:
            validate_name(expect)
        except InputError:
            raise LibraryError(
                f"task folder {shown(folder)} is not a valid task name; rename or remove it"
            ) from None
        return info, raw

    def _read_weights(self, info: TaskInfo) -> dict[str, bytes]:
        """The weight files' bytes (their digests are checked by :func:`parse_task`)."""
        assert info.path is not None
        what = f"task '{info.name}'"
        return {f: fs.read_regular(info.path / f, MAX_WEIGHT_BYTES, what) for f in WEIGHT_FILES}

    def _load_folder(
        self, folder: Path, name: str | None = None
    ) -> tuple[LoadedTask, bytes, dict[str, bytes]]:
        """Read metadata, read weights, parse: a verified task, its ``task.json`` and weights."""
        info, meta_raw = self._read_meta(folder, name)
        raw = self._read_weights(info)
        return parse_task(info, raw, f"task '{shown(info.name)}'"), meta_raw, raw

    def _folder_of(self, name: str) -> Path:
        """The folder of an existing task, or LibraryError naming the tasks there are."""
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none yet"
            raise LibraryError(f"no task named '{name}' in {shown(self.root)} (its tasks: {known})")
        return folder

    def tasks(self, backbone: str | None = None) -> list[TaskInfo]:
        """Every task whose metadata reads (``active`` marks those of ``backbone`` when given).

        Reads only ``task.json`` files (fast, no weights): :meth:`scan` verifies the weights."""
        out = []
        for folder in self._task_dirs():
            try:
                info = self._read_meta(folder)[0]
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
                task = self._load_folder(folder)[0]
            except LibraryError as e:
                yield str(e)
                continue
            if backbone is None or task.info.backbone == backbone:
                task.info = task.info.with_(active=True)
                yield task

    def problems(self) -> list[str]:
        """One line per task that cannot be used (metadata, unexpected files, digests, weights)."""
        return [item for item in self.scan() if isinstance(item, str)]

    def names(self) -> list[str]:
        return [t.name for t in self.tasks()]

    def __contains__(self, name: object) -> bool:
        try:
            n = validate_name(name)  # type: ignore[arg-type]
        except InputError:
            return False
        return (self.root / n).is_dir() and n in self.names()

    def info(self, name: str) -> TaskInfo:
        return self._read_meta(self._folder_of(name))[0]

    def load(self, name: str) -> LoadedTask:
        """Read and verify one task's weights (digests, then safetensors, then tensor shapes)."""
        return self._load_folder(self._folder_of(name))[0]

    # ---- writing ---------------------------------------------------------------------------
    def _cleanup_stale(self) -> None:
        """Under the lock: remove writes of dead processes; undo interrupted overwrites."""
        cleanup_stale(self.root, self._whole_task)

    def _whole_task(self, folder: Path, name: str) -> bool:
        """True if ``folder`` holds a complete, verified task named ``name``."""
        try:
            self._load_folder(folder, name)
        except (LibraryError, InputError):
            return False
        return True

    def _refuse_case_twin(self, name: str) -> None:
        """Names that differ only in case are one folder on macOS and Windows, so a library
        that holds both could not be copied there: refuse the second one everywhere."""
        key = name.casefold()
        for folder in self._task_dirs():
            if folder.name != name and folder.name.casefold() == key:
                raise TaskExistsError(
                    f"task '{folder.name}' already exists in {shown(self.root)} and '{name}' "
                    "differs from it only in upper/lower case, which macOS and Windows treat as "
                    "the same name; choose another name"
                )

    def ensure_free(self, name: str) -> None:
        """Raise TaskExistsError early (before minutes of training) if ``name`` is taken."""
        name = validate_name(name)
        target = self.root / name
        self._refuse_case_twin(name)
        if target.exists() or target.is_symlink():
            raise TaskExistsError(
                f"task '{name}' already exists in {shown(self.root)}; choose another name, "
                "or replace or extend that task"
            )

    @staticmethod
    def _stage(tmp: Path, weights: dict[str, bytes], final: TaskInfo) -> None:
        """Fill the temporary folder ``tmp``: the weight files, and ``final`` as ``task.json``."""
        tmp.mkdir()
        for fname, blob in weights.items():
            fs.write_file(tmp / fname, blob)
        fs.write_file(tmp / META, json.dumps(final.to_json(), indent=2).encode("utf-8"))
        fs.fsync_dir(tmp)

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
        name = validate_name(info.name)
        check_against(info, alignment, router, f"task '{name}'")
        if not overwrite:
            self.ensure_free(name)
        weights = {
            f: tt.to_bytes(s) for f, s in zip(WEIGHT_FILES, (alignment, router), strict=True)
        }
        files = {f: hashlib.sha256(b).hexdigest() for f, b in weights.items()}
        final = info.with_(name=name, files=files, format_version=format_of(info), path=None)
        tmp = fs.new_tmp(self.root)
        try:
            self._stage(tmp, weights, final)
            with self._locked():
                self._commit(tmp, name, overwrite)
        except OSError as e:
            raise LibraryError(
                f"could not save task '{name}' to {shown(self.root)}: {fs.os_message(e)} "
                "(nothing in the library was changed)"
            ) from None
        finally:
            fs.done_tmp(tmp)
        return final.with_(path=self.root / name)

    def _commit(self, tmp: Path, name: str, overwrite: bool) -> None:
        """Under the lock: move a finished temporary folder into place."""
        self._cleanup_stale()
        target = self.root / name
        self._refuse_case_twin(name)
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise TaskExistsError(
                    f"task '{name}' already exists in {shown(self.root)}; choose another name"
                )
            trash = self.root / f".trash-{uuid.uuid4().hex[:8]}-{name}"
            os.replace(target, trash)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(trash, target)
                raise
            fs.fsync_dir(self.root)
            fs.rmtree(trash)
        else:
            os.replace(tmp, target)
        fs.fsync_dir(self.root)

    def _discard(self, folder: Path) -> None:
        """Under the lock: take a task folder out of the library (renamed away, then removed)."""
        gone = fs.new_tmp(self.root)
        try:
            os.replace(folder, gone)
            fs.fsync_dir(self.root)
        finally:
            fs.done_tmp(gone)

    def remove(self, name: str) -> None:
        """Delete a task (also a broken one). Raises LibraryError if there is none of that name."""
        name = validate_name(name)
        with self._locked():
            self._cleanup_stale()
            target = self._folder_of(name)
            try:
                self._discard(target)
            except OSError as e:
                raise LibraryError(f"could not remove task '{name}': {fs.os_message(e)}") from None

    def rename(self, old: str, new: str) -> TaskInfo:
        """Give a task a new name (its weights are copied as they are, then the old name goes)."""
        old, new = validate_name(old), validate_name(new)
        src = self._folder_of(old)
        task, meta_raw, raw = self._load_folder(src)
        if old == new:
            return task.info
        self.ensure_free(new)
        final = task.info.with_(name=new, path=None)
        return self._rewrite(src, meta_raw, raw, final, f"rename task '{old}' to '{new}'")

    def update_info(self, name: str, change: Callable[[LoadedTask], TaskInfo]) -> TaskInfo:
        """Replace a task's metadata by ``change(task)`` (weights kept byte for byte), checked
        against the weights and written atomically; the new format version is stamped."""
        task, meta_raw, raw = self._load_folder(self._folder_of(name))
        final = change(task)
        final = final.with_(format_version=format_of(final), path=None)
        check_against(final, task.alignment, task.router, f"task '{task.info.name}'")
        return self._rewrite(task.info.path, meta_raw, raw, final, f"update task '{name}'")

    def _rewrite(self, src, meta_raw: bytes, raw: dict, final: TaskInfo, what: str) -> TaskInfo:
        """Write ``final`` with the weights ``raw`` of the task in ``src`` (under the lock: only
        if its ``task.json`` is still ``meta_raw``); a new name leaves ``src`` removed."""
        tmp = fs.new_tmp(self.root)
        try:
            self._stage(tmp, raw, final)
            with self._locked():
                self._cleanup_stale()
                try:
                    unchanged = (src / META).read_bytes() == meta_raw
                except OSError:
                    unchanged = False
                if not unchanged:
                    raise LibraryError(f"could not {what}: another process changed it; try again")
                same = src.name == final.name
                self._commit(tmp, final.name, overwrite=same)
                if not same:
                    self._discard(src)
        except OSError as e:
            raise LibraryError(f"could not {what}: {fs.os_message(e)}") from None
        finally:
            fs.done_tmp(tmp)
        return final.with_(path=self.root / final.name)

    # ---- exchange between sites (see casam.library.exchange) ---------------------------------
    def export(self, name: str, dest: str | Path) -> Path:
        """Write one task as a single ``.casamtask`` file (a zip of its three files)."""
        from casam.library.exchange import export_task

        task, meta_raw, raw = self._load_folder(self._folder_of(name))
        return export_task(task.info.name, meta_raw, raw, dest)

    def import_task(
        self, src: str | Path, name: str | None = None, overwrite: bool = False
    ) -> TaskInfo:
        """Add a task from a ``.casamtask`` file or a task folder (verified before it lands)."""
        from casam.library.exchange import read_task

        task = read_task(Path(src).expanduser(), name)
        return self.save(task.info, task.alignment, task.router, overwrite=overwrite)
