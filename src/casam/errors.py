"""User-facing errors: each message says what was wrong and what to do, in one line."""

from __future__ import annotations


class CasamError(Exception):
    """Base class of every error meant to be shown to a user (CLI: exit code 2, no traceback)."""


class InputError(CasamError, ValueError):
    """An image, mask, box or argument the user gave is unusable."""


class LibraryError(CasamError):
    """A task library or one of its tasks cannot be read or written."""


class TaskExistsError(LibraryError):
    """A task of that name already exists in the library."""


class CheckpointError(CasamError):
    """A backbone checkpoint is missing, unreadable or for another architecture."""


class Cancelled(CasamError):
    """Raised inside long work when the caller asked to stop; nothing was saved."""
