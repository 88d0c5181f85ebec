"""``casam._native.import_torch``: torch imported from a worker with its libraries loaded
without the GIL, and nothing of the mechanism left behind."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from casam import _native

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dlopen on Linux")


@linux
def test_gil_free_dlopen_loads_and_reports_failures():
    assert _native.gil_free_dlopen("libc.so.6", ctypes.RTLD_LOCAL | 2)
    with pytest.raises(OSError, match="no-such-library"):
        _native.gil_free_dlopen("libno-such-library.so", 2)


@linux
def test_ctypes_loads_through_it_and_is_restored():
    original = ctypes._dlopen
    with _native._ctypes_without_gil():
        assert ctypes._dlopen is not original
        libm = ctypes.CDLL("libm.so.6")
        libm.cos.restype, libm.cos.argtypes = ctypes.c_double, [ctypes.c_double]
        assert libm.cos(0.0) == 1.0
        with pytest.raises(OSError):
            ctypes.CDLL("libno-such-library.so")
    assert ctypes._dlopen is original


def test_torch_already_imported_is_returned():
    import torch

    assert _native.import_torch() is torch


def test_fresh_import_from_a_worker_thread():
    """In a new process: torch imported by a worker works, libtorch was loaded ahead of
    ``torch._C`` on Linux, and ctypes and the import machinery are as they were."""
    code = textwrap.dedent(
        """
        import ctypes, sys, threading
        from casam import _native
        before, finders = ctypes._dlopen, list(sys.meta_path)
        out = {}
        t = threading.Thread(target=lambda: out.update(torch=_native.import_torch()))
        t.start(); t.join()
        torch = out["torch"]
        assert torch.ones(3).sum().item() == 3.0
        assert ctypes._dlopen is before and sys.meta_path == finders
        print(",".join(_native.preloaded))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    if sys.platform.startswith("linux"):
        assert "libtorch.so" in res.stdout
