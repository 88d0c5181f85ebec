"""What this machine's processor can do, for choosing an encoder runtime."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: The instruction-set flags that decide the runtime and precision (Linux ``/proc/cpuinfo`` names).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _proc_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


@functools.cache
def cpu_flags() -> dict[str, bool]:
    """Which of ``FLAGS`` the CPU has. Linux reads /proc/cpuinfo; elsewhere torch's own
    capability probe (``avx2`` / ``avx512``) and oneDNN's bf16 check stand in."""
    found = _proc_flags()
    if found is not None:
        return {f: f in found for f in FLAGS}
    import torch

    cap = str(torch.backends.cpu.get_cpu_capability()).lower()
    bf16 = bf16_native()
    return {
        "avx2": cap.startswith("avx"),
        "avx512f": cap.startswith("avx512"),
        "avx512_bf16": bf16,
        "avx512_vnni": cap.startswith("avx512"),
        "amx_tile": False,
        "amx_bf16": False,
    }


@functools.cache
def bf16_native() -> bool:
    """True when bfloat16 matrix products run on native units (AVX512-BF16 or AMX via oneDNN)."""
    found = _proc_flags()
    if found is not None:
        return bool({"avx512_bf16", "amx_bf16"} & found)
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError, ImportError):
        return False
