"""User-facing errors: each message says what was wrong and what to do, in one line."""

from __future__ import annotations


class CasamError(Exception):
    """Base class of every error meant to be shown to a user (CLI: exit code 2, no traceback).

    ``subject`` names what the message is about when it is one of the user's choices
    ("checkpoint", "device", "backbone", a ``LearnSettings`` field...), so a front end can
    point at its own control for it (the CLI adds the flag's name).
    """

    def __init__(self, message: str = "", *, subject: str | None = None):
        super().__init__(message)
        self.subject = subject


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
