"""The arithmetic floor of learning a task, in reference encoder units (issue 16's ``learn_s_20``).

    python benchmarks/learn_floor.py [SPEED_JSON ...] [--json OUT]

Counts the floating-point work of one training image (the Alignment Layer of the default
``LearnSettings`` and the frozen mask decoder, forward and backward, one box, a batch of
``batch_size``) with ``torch.utils.flop_counter`` (the same counter as ``encoder_gflop``; it
does not depend on the machine), then, for each ``speed.py`` result given (default: every
``results/speed-*.json`` that has the rates), the fewest encoder units that learning
``learn_s_20``'s 20 slices can take at that machine's measured matmul rate:

    floor = (20 x encoder_gflop + epochs x 16 x train_gflop_per_image) / rate / encoder_ms_reference

(``learn_task`` holds 4 of the 20 slices out by default and trains on 16)
with ``rate`` the fp32 rate (a CPU without native bf16 trains in fp32; embedding at the fp32
rate too) or, where the run measured one, the bf16 rate. Beside it: the rate the learning run
of that JSON actually reached in its ``align`` stage (its epochs from ``--epochs-of``). The VAE
router, the held-out evaluation and Python's own work are left out, so a real run is slower.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE  # noqa: E402

N_SLICES = 20
SCHEDULES = (8, 12, 16)
#: epochs of the learning run recorded in each speed JSON (the default of its day)
EPOCHS_OF = {"speed-epyc-zen5-16epochs.json": 16}


def train_gflop_per_image() -> float:
    """GFLOP of one training image through the default Alignment Layer and the decoder
    (forward and backward), measured on a batch of ``LearnSettings().batch_size``."""
    from torch.utils.flop_counter import FlopCounterMode

    from casam.alignment import AlignmentLayer
    from casam.config import LearnSettings
    from casam.sam import get_backbone
    from casam.training import dice_bce

    s = LearnSettings()
    bb = get_backbone()
    bb.mask_decoder.requires_grad_(False)
    bb.prompt_encoder.requires_grad_(False)
    n = s.batch_size
    z = torch.randn(n, 256, 64, 64) * 0.1
    boxes = torch.tensor([[40.0, 40.0, 200.0, 200.0]] * n)
    target = (torch.rand(n, 256, 256) > 0.5).float()
    layer = AlignmentLayer(s.blocks)
    layer.set_scale(z)
    layer.train().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        logits, _ = bb.decode(layer(z), boxes)
        dice_bce(logits[:, 0], target).backward()
    return fc.get_total_flops() / 1e9 / n


def n_train() -> int:
    """Training images of ``learn_s_20``: the default held-out split of its 20 slices."""
    from casam.config import LearnSettings
    from casam.samples import split_holdout

    return len(split_holdout(N_SLICES, LearnSettings())[0])


def floors(speed: dict, g_img: float, epochs_run: int) -> dict:
    n = n_train()
    ref_s = speed["encoder_ms_reference"] / 1000
    enc = speed["encoder_gflop"]
    rates = {"fp32": speed["machine_gflops_fp32"]}
    if speed.get("machine_gflops_bf16", 0) > speed["machine_gflops_fp32"]:
        rates["bf16"] = speed["machine_gflops_bf16"]
    out = {
        "cpu_flags": speed.get("machine", {}).get("cpu_flags") or speed.get("cpu_flags"),
        "encoder_ms_reference": speed["encoder_ms_reference"],
        "machine_gflops": rates,
        "learn_s_20": speed.get("learn_s_20"),
        "learn_units_20": round(speed["learn_s_20"] / ref_s, 1) if "learn_s_20" in speed else None,
    }
    for name, rate in rates.items():
        for e in SCHEDULES:
            gflop = N_SLICES * enc + e * n * g_img
            out[f"floor_units_{name}_{e}epochs"] = round(gflop / rate / ref_s, 1)
    align = (speed.get("learn_stages_s") or {}).get("align")
    if align:
        out["align_epochs"] = epochs_run
        out["align_gflops_reached"] = round(epochs_run * n * g_img / align, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("speed", nargs="*", help="speed.py JSON files (default: results/speed-*.json)")
    ap.add_argument("--json", default=str(HERE / "results" / "learn-floor.json"))
    args = ap.parse_args(argv)
    files = [Path(f) for f in args.speed] or sorted((HERE / "results").glob("speed*.json"))
    g = train_gflop_per_image()
    res = {"train_gflop_per_image": round(g, 2), "slices": N_SLICES, "train_images": n_train()}
    res["machines"] = {}
    print(f"training: {g:.2f} GFLOP per image and epoch (layer + decoder, forward + backward)")
    for f in files:
        speed = json.loads(f.read_text())
        if not all(k in speed for k in ("machine_gflops_fp32", "encoder_ms_reference")):
            continue
        row = floors(speed, g, EPOCHS_OF.get(f.name, 8))
        res["machines"][f.name] = row
        print(f.name, json.dumps(row))
    Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
