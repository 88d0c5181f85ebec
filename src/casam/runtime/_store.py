"""The on-disk cache of exported encoders: one folder per key, checked before every use.

A folder holds the runtime's files and ``manifest.json`` (written last) with the key's fields and
the SHA-256 of each file. A folder whose manifest is missing, unreadable, for another key, or whose
files do not match their digests is stale or broken: it is deleted and the model built again.
Builds happen in a temporary folder beside the final one, under a file lock, and are moved into
place in one rename, so a crash mid-build never leaves a folder that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Bumped when the layout of an exported folder changes.
STORE_VERSION = 1
MANIFEST = "manifest.json"


def runtime_cache_dir() -> Path:
    """Where exported encoders live (``CASAM_RUNTIME_CACHE`` overrides it): the per-user cache
    folder's ``runtimes`` (not moved by ``CASAM_CACHE``, which holds embeddings: an export is
    checked on every load, so sharing it is safe)."""
    env = os.environ.get("CASAM_RUNTIME_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    from casam.config import APP_NAME

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "runtimes"


def cache_key(fields: dict[str, str | int]) -> str:
    """The folder name of one export: a digest of every field that changes its files."""
    text = json.dumps({**fields, "store": STORE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def check_folder(folder: Path, fields: dict[str, str | int]) -> str | None:
    """Why ``folder`` cannot be used for ``fields`` (None: it can)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({type(e).__name__})"
    if not isinstance(manifest, dict) or manifest.get("fields") != {**fields}:
        return "made for another model or runtime version"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, digest in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its digest"
    return None


def is_built(root: Path, fields: dict[str, str | int]) -> bool:
    """Whether a finished folder for ``fields`` is under ``root`` (its manifest names these
    fields; its files are not hashed here: :func:`fetch_or_build` checks them before use)."""
    try:
        manifest = json.loads((root / cache_key(fields) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("fields") == {**fields}


def read_extra(folder: Path) -> dict:
    """What the builder recorded beside the files (e.g. its numerics check)."""
    return dict(json.loads((folder / MANIFEST).read_text()).get("extra", {}))


def fetch_or_build(
    root: Path,
    fields: dict[str, str | int],
    build: Callable[[Path], dict],
    on_rebuild: Callable[[str], None] | None = None,
) -> Path:
    """The checked folder for ``fields`` under ``root``, built by ``build(tmp_folder)`` if it is
    missing, stale or broken. ``build`` writes its files into the folder it is given and returns
    extra facts for the manifest; an exception from it leaves nothing behind."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(fields)
    final = root / key
    with FileLock(str(root / f"{key}.lock")):
        if final.exists():
            why = check_folder(final, fields)
            if why is None:
                return final
            if on_rebuild is not None:
                on_rebuild(why)
            shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            extra = build(tmp)
            files = {
                p.name: _sha256(p)
                for p in sorted(tmp.iterdir())
                if p.is_file() and p.name != MANIFEST
            }
            manifest = {"fields": {**fields}, "files": files, "extra": extra}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
