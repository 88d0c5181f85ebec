"""The encoder-runtime figures of benchmarks/speed.py: FLOPs, machine rates, speed-up, roofline
share, a 100-slice volume and the start-up of a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import torch

READY = (
    "import time; t = time.perf_counter()\n"
    "from casam import Predictor\n"
    "p = Predictor(library=False); p.backbone.runtime.prepare()\n"
    "print(time.perf_counter() - t)\n"
)


def encoder_gflop(bb, x: torch.Tensor) -> float:
    """FLOPs of one encoder forward (``torch.utils.flop_counter``), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        bb.image_encoder(x)
    return fc.get_total_flops() / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Measured rate of an n x n matmul on this machine now (median), GFLOP/s."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(ts)) / 1e9


def machine_rates() -> dict:
    from casam.runtime import cpu_flags

    return {
        "machine_gflops_fp32": round(matmul_gflops(torch.float32), 1),
        "machine_gflops_bf16": round(matmul_gflops(torch.bfloat16), 1),
        "cpu_flags": cpu_flags(),
    }


def encoder_figures(ref, bb, x, x8, ref_times, def_times, out) -> dict:
    """Reference versus default runtime, from samples taken interleaved."""
    gflop = encoder_gflop(ref, x)
    ms_ref, ms = float(np.median(ref_times)), float(np.median(def_times))
    bb.runtime.embed(x8)
    b8 = []
    for _ in range(3):
        t = time.perf_counter()
        bb.runtime.embed(x8)
        b8.append((time.perf_counter() - t) * 1000 / len(x8))
    best_ms = min(ms, float(np.median(b8)))
    rate = max(out["machine_gflops_fp32"], out["machine_gflops_bf16"])
    return {
        "encoder_gflop": round(gflop, 1),
        "encoder_ms_reference": round(ms_ref, 1),
        "encoder_ms_reference_samples": [round(t) for t in ref_times],
        "encoder_ms": round(ms, 1),
        "encoder_ms_samples": [round(t) for t in def_times],
        "encoder_ms_batch8_per_slice": round(float(np.median(b8)), 1),
        "encoder_speedup": round(ms_ref / ms, 2),
        "encoder_speedup_batch8": round(ms_ref / float(np.median(b8)), 2),
        "encoder_roofline_share": round((gflop / rate) / (best_ms / 1000), 3),
    }


def volume_slices(cache, n: int = 100) -> list[np.ndarray]:
    """``n`` real CT/MR slices: the benchmark tasks' volumes, in order."""
    import datasets

    images = []
    for t in datasets.load_tasks(cache):
        if t.modality in ("CT", "MR"):
            images += [im for im, _ in t.train + t.test]
    return images[:n]


def volume_prepare_s(bb, cache) -> float:
    """Seconds to embed 100 real slices with a fresh Predictor (no disk cache): the dock's
    "Prepare volume" on the default runtime, batched."""
    from casam import Predictor

    images = volume_slices(cache)
    p = Predictor(backbone=bb, library=False)
    t = time.perf_counter()
    for _ in p.iter_embed(images):
        pass
    return round((time.perf_counter() - t) * len(images) / 100, 1)


def model_ready_s(repeats: int = 3) -> float:
    """Median seconds of a fresh process from ``import casam`` to a Predictor able to embed
    (default runtime, its export already cached)."""
    env = dict(os.environ)
    ts = []
    for _ in range(repeats):
        r = subprocess.run(
            [sys.executable, "-c", READY], capture_output=True, text=True, env=env, check=True
        )
        ts.append(float(r.stdout.strip().splitlines()[-1]))
    return round(float(np.median(ts)), 2)
