"""Task names: the rules that keep every name a single, portable folder name."""

from __future__ import annotations

import unicodedata

from casam.errors import InputError

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


def shown(x: object) -> str:
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
        listed = ", ".join(repr(c) for c in bad)
        raise InputError(
            f"task name {name!r} contains {listed}; use letters, digits, spaces and - _ . + ( ) ,"
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
