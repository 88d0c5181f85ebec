"""Which encoder runtime to use here, and the guard that falls back to plain torch.

The default order per machine kind is what measured best on that kind (docs/benchmark-speed.md,
"Encoder runtimes"); ``CASAM_RUNTIME`` (or ``runtime=`` in the API) forces one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings

import numpy as np

from casam.errors import InputError
from casam.runtime._engines import (
    EMBED_SHAPE,
    EncoderRuntime,
    EncoderSource,
    OnnxRuntime,
    OpenVinoRuntime,
    TorchRuntime,
)

log = logging.getLogger("casam.runtime")

#: name -> (module that must be importable, builder)
RUNTIMES = {
    "torch": (None, lambda s: TorchRuntime(s)),
    "torch-bf16": (None, lambda s: TorchRuntime(s, bf16=True)),
    "onnxruntime": ("onnxruntime", lambda s: OnnxRuntime(s)),
    "openvino": ("openvino", lambda s: OpenVinoRuntime(s, "fp32")),
    "openvino-bf16": ("openvino", lambda s: OpenVinoRuntime(s, "bf16")),
}
ENV = "CASAM_RUNTIME"


class RuntimeFallbackWarning(UserWarning):
    """The chosen encoder runtime could not be used; plain torch runs instead."""


def installed(name: str) -> bool:
    module = RUNTIMES[name][0]
    return module is None or importlib.util.find_spec(module) is not None


def default_order(device: str, bf16: bool | None = None) -> list[str]:
    """Runtimes to try, best first, for a device type ("cpu", "cuda", "mps") and CPU kind.

    ``bf16``: whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX; None: ask it).
    There OpenVINO bf16 comes first: with the default (kNN) router it agreed with fp32 on every
    routing decision of the benchmark and moved IoU by under 0.3 points, and tasks learned from
    its embeddings gained as much as from fp32 ones (docs/benchmark-speed.md).
    """
    if device != "cpu":
        return ["torch"]
    if bf16 is None:
        from casam.runtime._cpu import bf16_native

        bf16 = bf16_native()
    fp32 = ["openvino", "onnxruntime", "torch"]
    return ["openvino-bf16", *fp32] if bf16 else fp32


def requested_runtime(runtime: str | None = None) -> str:
    """``runtime`` if given, else ``$CASAM_RUNTIME``, else "auto" (checked)."""
    name = (runtime or os.environ.get(ENV) or "auto").strip().lower()
    if name != "auto" and name not in RUNTIMES:
        raise InputError(
            f"unknown encoder runtime {name!r}; choose auto or one of: {', '.join(RUNTIMES)}"
        )
    return name


class GuardedRuntime(EncoderRuntime):
    """The chosen runtime behind a guard: if it is missing, fails to build, raises, or returns
    anything but finite ``(B, 256, 64, 64)`` values, plain torch takes over for good, with one
    notice (a ``RuntimeFallbackWarning`` and a log line); the failed call is recomputed."""

    def __init__(self, source: EncoderSource, runtime: str | None = None):
        self.source = source
        self.requested = requested_runtime(runtime)
        self.notice: str | None = None
        self._lock = threading.RLock()
        self._torch: TorchRuntime | None = None
        self._active: EncoderRuntime | None = None
        order = default_order(source.device) if self.requested == "auto" else [self.requested]
        self._choice = next((n for n in order if installed(n)), None)
        if self._choice is None:
            self._fall_back(f"{self.requested} is not installed")

    # what the rest of casam reads
    @property
    def active(self) -> EncoderRuntime:
        with self._lock:
            if self._active is None:
                self._active = RUNTIMES[self._choice][1](self.source)
            return self._active

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.active.name

    @property
    def title(self) -> str:  # type: ignore[override]
        return self.active.title

    @property
    def identity(self) -> str:
        return self.active.identity

    @property
    def batch(self) -> int:  # type: ignore[override]
        return self.active.batch

    def describe(self) -> str:
        """One line for the CLI and the dock, e.g. "OpenVINO bf16 2026.4.1 (auto)"."""
        a = self.active
        how = "auto" if self.requested == "auto" else f"{ENV}={self.requested}"
        text = f"{a.title} {a.version} ({how})"
        return text + (" - fallback: " + self.notice if self.notice else "")

    def _fall_back(self, reason: str) -> None:
        with self._lock:
            if self._torch is None:
                self._torch = TorchRuntime(self.source)
            self._active, self._choice = self._torch, "torch"
            if self.notice is None:
                self.notice = f"encoder runtime {self.requested} unavailable ({reason})"
                msg = f"{self.notice}; using plain PyTorch fp32 (slower, same results)"
                log.warning(msg)
                warnings.warn(msg, RuntimeFallbackWarning, stacklevel=3)

    def prepare(self) -> None:
        try:
            self.active.prepare()
        except Exception as e:  # noqa: BLE001 - any failure of an optional runtime: use torch
            if isinstance(self.active, TorchRuntime) and self.active.precision == "fp32":
                raise
            self._fall_back(f"{type(e).__name__}: {str(e)[:160]}")
            self.active.prepare()

    def embed(self, x: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S)`` float32 -> ``(B, 256, 64, 64)`` float32, never unchecked."""
        rt = self.active
        try:
            z = rt.embed(x)
            _check(z, x.shape[0])
            return z
        except Exception as e:  # noqa: BLE001
            if rt is self._torch or (isinstance(rt, TorchRuntime) and rt.precision == "fp32"):
                raise
            self._fall_back(f"{type(e).__name__}: {str(e)[:160]}")
            return self.active.embed(x)


def _check(z: np.ndarray, n: int) -> None:
    if not isinstance(z, np.ndarray) or z.shape != (n, *EMBED_SHAPE):
        raise RuntimeError(
            f"embedding of shape {getattr(z, 'shape', None)}, expected {EMBED_SHAPE}"
        )
    if not np.isfinite(z).all():
        raise RuntimeError("embedding with NaN or infinite values")
