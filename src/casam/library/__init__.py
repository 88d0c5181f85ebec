"""The task library: a folder of learned tasks, safe to share between processes and sites.

- :mod:`~casam.library.names`: which task names are valid (one portable folder name each).
- :mod:`~casam.library.format`: the files of a task, :class:`TaskInfo` and the one parser.
- :mod:`~casam.library.fs`: durable writes, bounded reads, the file lock, temporary folders.
- :mod:`~casam.library.store`: :class:`TaskLibrary` (list, load, save, rename, remove).
- :mod:`~casam.library.recovery`: tidying up after a process died mid-change.
- :mod:`~casam.library.exchange`: ``.casamtask`` files (export, import).

The tensors inside a task are described and checked by :mod:`casam.task_tensors`.
"""

from __future__ import annotations

from casam.library.format import (
    EXPORT_SUFFIX,
    MARKER,
    META,
    TASK_FILES,
    WEIGHT_FILES,
    LoadedTask,
    TaskInfo,
    new_task_info,
)
from casam.library.names import validate_name
from casam.library.store import TaskLibrary

__all__ = [
    "EXPORT_SUFFIX",
    "MARKER",
    "META",
    "TASK_FILES",
    "WEIGHT_FILES",
    "LoadedTask",
    "TaskInfo",
    "TaskLibrary",
    "new_task_info",
    "validate_name",
]
