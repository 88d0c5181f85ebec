"""Where the seconds of "learn a task" go: micro-timings behind dev/benchmark-needs.md.

    python benchmarks/micro.py            # prints one JSON object

All variants of one measurement are interleaved (round-robin) and medians are reported, so a
shared machine's load drifts hit them alike. Synthetic inputs of the real shapes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402


def interleaved(fns: dict, reps: int) -> dict:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}


def main() -> int:
    from casam.alignment import AlignmentLayer
    from casam.sam import get_backbone
    from casam.training import dice_bce

    bb = get_backbone()
    out = {"machine": machine()}
    enc = bb.image_encoder
    x1 = torch.rand(1, 3, 256, 256)
    x4 = torch.rand(4, 3, 256, 256)

    def enc_b1():
        with torch.no_grad():
            for _ in range(4):
                enc(x1)

    def enc_b4():
        with torch.no_grad():
            enc(x4)

    def enc_bf16():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for _ in range(4):
                enc(x1)

    out["encoder_4_images_ms"] = interleaved(
        {"batch1_x4": enc_b1, "batch4": enc_b4, "bf16_batch1_x4": enc_bf16}, 2
    )

    z = torch.randn(6, 256, 64, 64)
    boxes = torch.tensor([[50.0, 60, 150, 170]] * 6)
    tgt = (torch.rand(6, 256, 256) > 0.5).float()

    def step_fn(layer, bf16, decoder=True, channels_last=False):
        opt = torch.optim.Adam(layer.parameters(), 1e-3)
        zz = z.contiguous(memory_format=torch.channels_last) if channels_last else z
        if channels_last:
            layer.to(memory_format=torch.channels_last)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                h = layer(zz)
                if decoder:
                    lg, _ = bb.decode(h, boxes)
                    loss = dice_bce(lg[:, 0], tgt)
                else:
                    loss = h.float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    zg = z.clone().requires_grad_(True)

    def decoder_only(bf16):
        def f():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                lg, _ = bb.decode(zg, boxes)
            dice_bce(lg[:, 0], tgt).backward()

        return f

    fns = {}
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        fns[f"step_1block_{tag}"] = step_fn(AlignmentLayer(1).train(), bf16)
        fns[f"layer_only_1block_{tag}"] = step_fn(AlignmentLayer(1).train(), bf16, decoder=False)
        fns[f"decoder_only_{tag}"] = decoder_only(bf16)
        fns[f"step_1block_{tag}_channels_last"] = step_fn(
            AlignmentLayer(1).train(), bf16, channels_last=True
        )
    out["train_step_batch6_ms"] = interleaved(fns, 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
