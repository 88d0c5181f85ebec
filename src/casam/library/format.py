"""The task format: file names, size limits, the ``TaskInfo`` metadata and the one parser.

A task is three files: ``task.json`` (:class:`TaskInfo`, with the SHA-256 of both weight files)
and the two safetensors files of :mod:`casam.task_tensors`. :func:`parse_task` is the one way
from those bytes (from a library folder or a ``.casamtask`` file) to a verified
:class:`LoadedTask`: metadata, then digests, then tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from casam.config import ADAPTER_FORMATS, ADAPTER_KINDS, TASK_FORMAT_VERSION
from casam.errors import LibraryError
from casam.library.names import shown

MARKER = "casam-library.json"
META = "task.json"
WEIGHT_FILES = ("alignment.safetensors", "router.safetensors")
TASK_FILES = (META, *WEIGHT_FILES)
EXPORT_SUFFIX = ".casamtask"
MAX_META_BYTES = 1 << 20
MAX_WEIGHT_BYTES = 256 << 20
MAX_IMPORT_BYTES = 512 << 20


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_sha256(x: object) -> bool:
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
    knn_threshold: float | None = None
    """The default router's distance threshold (casam.neighbours); None in a task of format 1
    (computed from its stored features when it is loaded, written by ``casam recalibrate``)."""
    adapter: str = "alignment"
    """The adapter kind (``config.ADAPTER_KINDS``): what ``alignment.safetensors`` holds; absent
    (an Alignment Layer) before task format 3."""
    format_version: int = TASK_FORMAT_VERSION
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
        where = where or (shown(path / META) if path is not None else META)
        if not isinstance(d, dict):
            raise LibraryError(f"{where} is not a JSON object; task skipped")
        fields_ = {
            k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("path", "active")
        }
        missing = [
            k
            for k, f in cls.__dataclass_fields__.items()
            if k not in fields_
            and k not in ("path", "active", "format_version", "knn_threshold", "adapter")
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
            if k in fields_ and not (is_int(fields_[k]) and fields_[k] >= 0):
                problems.append(k)
        th = fields_["threshold"]
        if not (is_number(th) and math.isfinite(th) and th >= 0):
            problems.append("threshold")
        knn = fields_.get("knn_threshold")
        if knn is not None and not (is_number(knn) and math.isfinite(knn) and knn > 0):
            problems.append("knn_threshold")
        for k in ("iou_sam", "iou_task", "biou_sam", "biou_task"):
            if fields_[k] is not None and not is_number(fields_[k]):
                problems.append(k)
        settings = fields_["settings"]
        if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
            problems.append("settings")
        elif "beta" in settings and not (
            is_number(settings["beta"]) and math.isfinite(settings["beta"])
        ):
            problems.append("settings.beta")
        files = fields_["files"]
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and is_sha256(v) for k, v in files.items()
        ):
            problems.append("files")
        if problems:
            raise LibraryError(
                f"{where} has malformed {', '.join(problems)}; task skipped (remove it and learn "
                "it again)"
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
    """A task's verified metadata and its two state dicts (see :mod:`casam.task_tensors`)."""

    info: TaskInfo
    alignment: dict[str, Any]
    router: dict[str, Any]


def new_task_info(name: str, **fields_: Any) -> TaskInfo:
    """Metadata of a task learned now (``files`` are filled in when it is saved)."""
    created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return TaskInfo(name=name, created=created, files={}, **fields_)


def parse_meta(raw: bytes, where: str, path: Path | None = None) -> TaskInfo:
    """``task.json`` bytes -> TaskInfo, checked (JSON, format version, fields, file list).

    ``where`` names the file in messages; ``path`` is the task folder, if it has one.
    """
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LibraryError(f"{where} is not valid JSON; task refused") from None
    if not isinstance(d, dict):
        raise LibraryError(f"{where} is not a JSON object; task refused")
    version = d.get("format_version", 0)
    if not is_int(version) or version > TASK_FORMAT_VERSION:
        raise LibraryError(
            f"{where} was written by a newer napari-casam (format {version!r}, this one reads "
            f"up to {TASK_FORMAT_VERSION}); upgrade napari-casam to use it"
        )
    kind = d.get("adapter", "alignment")
    if kind not in ADAPTER_KINDS:
        raise LibraryError(
            f"{where} has an adapter of kind {str(kind)[:40]!r}, which this napari-casam does not "
            f"know (it knows {', '.join(ADAPTER_KINDS)}); upgrade napari-casam to use it"
        )
    info = TaskInfo.from_json(d, path, where)
    if set(info.files) != set(WEIGHT_FILES):
        raise LibraryError(
            f"{where} lists files {sorted(info.files)}; expected {list(WEIGHT_FILES)}; task refused"
        )
    return info


def parse_task(info: TaskInfo, weights: dict[str, bytes], where: str) -> LoadedTask:
    """Weight-file bytes of a task whose metadata was parsed -> LoadedTask.

    Each file's SHA-256 must match ``info.files``; then the bytes are read as safetensors
    (never unpickled) and checked against the metadata (:func:`casam.task_tensors.check_tensors`).
    """
    from casam import task_tensors as tt

    for fname in WEIGHT_FILES:
        if hashlib.sha256(weights[fname]).hexdigest() != info.files[fname]:
            raise LibraryError(
                f"{where}: {fname} does not match its digest in {META} (truncated, corrupted or "
                "swapped); refused: remove it and learn or export it again"
            )
    align, router = (tt.from_bytes(weights[f], f, where) for f in WEIGHT_FILES)
    check_against(info, align, router, where)
    return LoadedTask(info, align, router)


def check_against(info: TaskInfo, alignment: Any, router: Any, where: str) -> None:
    """LibraryError unless the two states are the task ``info`` describes (adapter kind, blocks,
    thresholds)."""
    from casam import task_tensors as tt

    tt.check_tensors(
        alignment,
        router,
        blocks=info.blocks,
        threshold=info.threshold,
        beta=tt.beta_of(info.settings),
        where=where,
        knn_threshold=info.knn_threshold,
        adapter=info.adapter,
    )


def format_of(info: TaskInfo) -> int:
    """The task format a task is written with: the oldest that describes its adapter kind."""
    return ADAPTER_FORMATS[info.adapter]
