"""Image-encoder runtimes: the same frozen encoder run by the fastest engine this machine has.

>>> rt = GuardedRuntime(source)            # auto: chosen from the device and the CPU's features
>>> z = rt.embed(batch)                    # (B, 3, S, S) float32 -> (B, 256, 64, 64) float32
>>> rt.identity, rt.describe()             # part of embedding cache keys; a line for the user

Exports are built once and cached on disk (``runtime_cache_dir()``), keyed by the weights'
digest, the runtime, its version, the precision and the batch size. ``CASAM_RUNTIME`` forces one
of ``RUNTIMES`` (``torch`` is the fp32 reference). Learned tasks do not depend on the runtime:
only embeddings do (see docs/benchmark-speed.md for the cross-runtime measurements).
"""

from __future__ import annotations

from casam.runtime._child import build_in_child
from casam.runtime._cpu import bf16_native, cpu_flags, cpu_model
from casam.runtime._decoder import BoxDecoderRuntime
from casam.runtime._engines import (
    EncoderRuntime,
    EncoderSource,
    RuntimeUnavailable,
    probe_batch,
    rel_error,
)
from casam.runtime._select import (
    ENV,
    RUNTIMES,
    GuardedRuntime,
    RuntimeFallbackWarning,
    default_order,
    installed,
    requested_runtime,
)
from casam.runtime._store import runtime_cache_dir

__all__ = [
    "BoxDecoderRuntime",
    "ENV",
    "RUNTIMES",
    "EncoderRuntime",
    "EncoderSource",
    "GuardedRuntime",
    "RuntimeFallbackWarning",
    "RuntimeUnavailable",
    "bf16_native",
    "build_in_child",
    "cpu_flags",
    "cpu_model",
    "default_order",
    "installed",
    "probe_batch",
    "rel_error",
    "requested_runtime",
    "runtime_cache_dir",
]
