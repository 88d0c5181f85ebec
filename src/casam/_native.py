"""Import torch from a worker thread without stopping the other threads for long.

Loading a shared library holds the GIL for as long as the dynamic linker works: Python's import
of an extension module (``torch._C``) and ``ctypes.CDLL`` both call ``dlopen`` with the GIL held.
``import torch`` loads about 1.5 GB of libraries this way (``libtorch_cpu``, and on CUDA wheels
``libtorch_cuda``, cuBLAS, cuDNN...), in stretches of 0.1-0.5 s during which no other Python
thread runs: in the dock, the GUI thread cannot draw while the worker loads the model.

:func:`import_torch` imports torch as usual, in torch's own order, with two changes that only
move *where* ``dlopen`` runs, not what it loads: every ``ctypes.CDLL`` torch makes (its global
dependencies, CUDA libraries it front-loads) calls ``dlopen`` through a ctypes foreign function,
which releases the GIL; and just before ``torch._C`` is imported, the libraries it needs that do
not touch Python (``libtorch.so`` and its dependencies) are loaded the same way, so the import
itself finds them loaded. Anywhere this does not apply (not Linux, no ``dlopen``, a layout it
does not know) it is plain ``import torch``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.abc
import importlib.util
import os
import sys
import threading
from pathlib import Path

_lock = threading.Lock()
#: Libraries :func:`import_torch` loaded itself, without the GIL, ahead of ``torch._C``.
preloaded: list[str] = []


@functools.cache
def _libc_dlopen():
    """libc's ``dlopen`` and ``dlerror`` as ctypes foreign functions (called without the GIL)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None)
        dlopen, dlerror = lib.dlopen, lib.dlerror
    except (OSError, AttributeError):
        return None
    dlopen.argtypes, dlopen.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_void_p
    dlerror.argtypes, dlerror.restype = [], ctypes.c_char_p
    return dlopen, dlerror


def gil_free_dlopen(name: str | None, mode: int) -> int:
    """``dlopen(name, mode)`` with the GIL released; the handle, or OSError as ctypes raises."""
    funcs = _libc_dlopen()
    if funcs is None:
        raise OSError("dlopen is not available here")
    dlopen, dlerror = funcs
    handle = dlopen(os.fsencode(name) if name is not None else None, mode)
    if not handle:
        err = dlerror()
        raise OSError(err.decode(errors="replace") if err else f"{name}: cannot open")
    return handle


class _LoadBeforeTorchC(importlib.abc.MetaPathFinder):
    """Loads ``libtorch.so`` (no Python in it) without the GIL just before ``torch._C``."""

    def __init__(self, lib_dir: Path) -> None:
        self.lib_dir = lib_dir

    def find_spec(self, fullname, path, target=None):
        if fullname == "torch._C":
            lib = self.lib_dir / "libtorch.so"
            if lib.is_file():
                with contextlib.suppress(OSError):
                    gil_free_dlopen(str(lib), sys.getdlopenflags())
                    preloaded.append(lib.name)
        return None  # the usual finders import it


def _torch_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "lib"
    return lib if lib.is_dir() else None


@contextlib.contextmanager
def _ctypes_without_gil():
    """``ctypes.CDLL`` loads libraries with the GIL released while this is active."""
    original = ctypes._dlopen  # what CDLL.__init__ calls; it adds RTLD_NOW to every mode
    ctypes._dlopen = lambda name, mode=os.RTLD_LOCAL: gil_free_dlopen(name, mode | os.RTLD_NOW)
    try:
        yield
    finally:
        ctypes._dlopen = original


def import_torch():
    """``import torch``, loading its native libraries without the GIL (see the module's text)."""
    if "torch" in sys.modules:
        import torch

        return torch
    with _lock:
        if "torch" in sys.modules or _libc_dlopen() is None:
            import torch

            return torch
        lib_dir = _torch_lib_dir()
        finder = _LoadBeforeTorchC(lib_dir) if lib_dir is not None else None
        if finder is not None:
            sys.meta_path.insert(0, finder)
        try:
            with _ctypes_without_gil():
                import torch
        finally:
            if finder is not None:
                with contextlib.suppress(ValueError):
                    sys.meta_path.remove(finder)
        return torch
