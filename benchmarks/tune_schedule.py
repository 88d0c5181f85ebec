"""Sweep of the learning schedule: seconds to learn versus held-out IoU, on real slices.

    python benchmarks/tune_schedule.py [--configs default,paper,...] [--micro]

Data: 20 training slices of one structure (``_common.SPEED_TASK``: CT liver, evenly spread over
its training split) and a fixed held-out set (its 20 test slices), exactly as ``speed.py``.
Embeddings come from the benchmarks' disk cache (computed once), so each row's
``train s`` is learning WITHOUT the 20 encoder calls; ``learn_s_20 est`` adds 20 x the encoder
time measured in the same run, and ``target`` is 60 x encoder seconds (issue 4).

Each row is ``casam.training.learn_task`` with ``LearnSettings(**row)`` (everything else at its
default), into a throw-away library; IoU is measured with ``casam.Predictor`` on the held-out
slices (ground-truth boxes) and compared with plain SAM on the same slices.

It scores on a TEST split with one seed: use it for timing, not for choosing the default;
``tune_schedule_val.py`` chooses on the quality tasks' validation slices over seeds (issue 16).

``--micro`` first times one training step (batch 6) per block count with and without bf16
autocast, interleaved, to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, HERE, Samples, heldout_iou, machine, speed_slices  # noqa: E402

#: name -> LearnSettings overrides (relative to the paper's schedule for "paper*", else to
#: the library's defaults at the time of the run; the resolved values are printed).
CONFIGS: dict[str, dict] = {
    "paper": {"_paper": True},
    "paper fp32": {"_paper": True, "bf16": False},
    "1b 6e lr1e-3": dict(blocks=1, epochs=6, lr=1e-3, batch_size=6),
    "1b 6e lr1e-3 fp32": dict(blocks=1, epochs=6, lr=1e-3, batch_size=6, bf16=False),
    "1b 4e lr1e-3": dict(blocks=1, epochs=4, lr=1e-3, batch_size=6),
    "1b 4e lr2e-3": dict(blocks=1, epochs=4, lr=2e-3, batch_size=6),
    "1b 3e lr2e-3": dict(blocks=1, epochs=3, lr=2e-3, batch_size=6),
    "1b 8e lr1e-3": dict(blocks=1, epochs=8, lr=1e-3, batch_size=6),
    "1b 6e lr1e-3 b4": dict(blocks=1, epochs=6, lr=1e-3, batch_size=4),
    "1b 6e lr3e-3": dict(blocks=1, epochs=6, lr=3e-3, batch_size=6),
    "2b 4e lr1e-3": dict(blocks=2, epochs=4, lr=1e-3, batch_size=6),
    "3b 4e lr1e-3": dict(blocks=3, epochs=4, lr=1e-3, batch_size=6),
    "1b 6e vae300": dict(blocks=1, epochs=6, lr=1e-3, batch_size=6, vae_steps=300),
    "1b 6e lr3e-4": dict(blocks=1, epochs=6, lr=3e-4, batch_size=6),
    "1b 6e lr1e-4": dict(blocks=1, epochs=6, lr=1e-4, batch_size=6),
    "1b 8e lr3e-4": dict(blocks=1, epochs=8, lr=3e-4, batch_size=6),
    "1b 4e lr3e-4": dict(blocks=1, epochs=4, lr=3e-4, batch_size=6),
    "2b 6e lr3e-4": dict(blocks=2, epochs=6, lr=3e-4, batch_size=6),
    "1b 12e lr1e-3": dict(blocks=1, epochs=12, lr=1e-3, batch_size=6),
    "1b 10e lr1e-3": dict(blocks=1, epochs=10, lr=1e-3, batch_size=6),
    "1b 8e lr1e-3 b4": dict(blocks=1, epochs=8, lr=1e-3, batch_size=4),
    "1b 8e lr1e-3 fp32": dict(blocks=1, epochs=8, lr=1e-3, batch_size=6, bf16=False),
    "1b 8e lr3e-3": dict(blocks=1, epochs=8, lr=3e-3, batch_size=6),
    "1b 6e lr3e-4 fp32": dict(blocks=1, epochs=6, lr=3e-4, batch_size=6, bf16=False),
}
DEFAULT_RUN = (
    "paper,1b 6e lr1e-3,1b 8e lr1e-3,1b 12e lr1e-3,1b 6e lr3e-3,1b 8e lr3e-3,1b 8e lr1e-3 fp32"
)

KEYS = ("blocks", "epochs", "batch_size", "lr", "bf16", "vae_steps")


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def settings_for(cfg: dict):
    from casam import LearnSettings

    cfg = dict(cfg)
    paper = cfg.pop("_paper", False)
    return LearnSettings.paper(**cfg) if paper else LearnSettings(**cfg)


def micro(predictor, train, reps: int = 3) -> list[dict]:
    """One training step (batch 6, 1..3 blocks, fp32 / bf16), interleaved; median seconds."""
    from _common import train_layer

    from casam import LearnSettings

    samples = Samples.from_pairs(predictor, train[:6])
    rows = []
    times: dict[tuple[int, bool], list[float]] = {}
    for _ in range(reps):
        for blocks in (1, 2, 3):
            for bf16 in (False, True):
                s = LearnSettings(blocks=blocks, epochs=1, batch_size=6, bf16=bf16)
                t = time.perf_counter()
                train_layer(predictor.backbone, samples, s)
                times.setdefault((blocks, bf16), []).append(time.perf_counter() - t)
    for (blocks, bf16), ts in times.items():
        rows.append({"blocks": blocks, "bf16": bf16, "step_s": round(float(np.median(ts)), 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs", default=DEFAULT_RUN, help=f"comma-separated names of: {', '.join(CONFIGS)}"
    )
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--micro", action="store_true", help="time single training steps first")
    ap.add_argument("--out", default=str(HERE / "results" / "tune_schedule.json"))
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="only print the table of earlier runs' JSON files "
        "(e.g. sweeps split over processes); each run's rows keep their own encoder reference",
    )
    args = ap.parse_args(argv)
    if args.merge:
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        print_table(runs)
        return 0

    from casam import Predictor, TaskLibrary
    from casam.training import learn_task

    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs: {unknown}")
    train, held = speed_slices(args.data_cache, 20)
    images, masks = [im for im, _ in train], [m for _, m in train]
    tmp = Path(tempfile.mkdtemp(prefix="casam-tune-"))
    p = Predictor(library=TaskLibrary(tmp / "lib"), disk_cache=EMB_CACHE)
    bb = p.backbone
    for img in images:
        p.embed(img)
    result = {"machine": machine(), "backbone": bb.identity, "rows": []}

    x, _ = bb.prepare(images[0])
    enc: list[float] = []

    def sample_encoder(k=3):
        with torch.no_grad():
            bb.image_encoder(x)
            for _ in range(k):
                t = time.perf_counter()
                bb.image_encoder(x)
                enc.append(time.perf_counter() - t)

    sample_encoder()
    if args.micro:
        log("micro: one training step per block count and precision ...")
        result["micro"] = micro(p, train)
        log(json.dumps(result["micro"]))

    sam_iou, sam_biou = heldout_iou(p, held, None)
    result["heldout_iou_sam"] = sam_iou
    result["heldout_biou_sam"] = sam_biou
    for k, name in enumerate(names):
        s = settings_for(CONFIGS[name])
        marks: dict[str, float] = {}
        t0 = time.perf_counter()
        learn_task(
            images,
            masks,
            f"t{k}",
            predictor=p,
            settings=s,
            callback=lambda pr, marks=marks: marks.__setitem__(pr.stage, time.perf_counter()),
        )
        secs = time.perf_counter() - t0
        t_iou, t_biou = heldout_iou(p, held, f"t{k}")
        row = {
            "name": name,
            **{key: getattr(s, key) for key in KEYS},
            "train_s": round(secs, 1),
            "align_s": round(marks.get("align", t0) - marks.get("embed", t0), 1),
            "vae_s": round(marks.get("vae", t0) - marks.get("align", t0), 1),
            "iou": round(t_iou, 4),
            "biou": round(t_biou, 4),
            "gain": round(t_iou - sam_iou, 4),
        }
        result["rows"].append(row)
        log(json.dumps(row))
        sample_encoder(1)
    enc_s = float(np.median(enc))
    result["encoder_ms"] = round(enc_s * 1000, 1)
    result["learn_target_s"] = round(60 * enc_s, 1)
    paper_gain = next((r["gain"] for r in result["rows"] if r["name"] == "paper"), None)
    for r in result["rows"]:
        r["learn_s_20_est"] = round(r["train_s"] + 20 * enc_s, 1)
        r["gain_vs_paper"] = round(r["gain"] / paper_gain, 3) if paper_gain else None
    result["machine"]["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print_table([result])
    return 0


def print_table(runs: list[dict]) -> None:
    """One table over one or more runs; gain/paper uses the "paper" row of any run."""
    result = runs[0]
    sam_iou = result["heldout_iou_sam"]
    paper_gain = next(
        (r["gain"] for run in runs for r in run["rows"] if r["name"] == "paper"), None
    )
    print(
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
        f"{result['machine']['torch']}, "
        f"{result['machine']['threads']} threads, {result['machine']['date']}"
    )
    for run in runs:
        print(
            f"run {run['machine']['date']} ({run['machine']['threads']} threads, load "
            f"{run['machine']['load_avg_1m_at_start']}"
            f"..{run['machine'].get('load_avg_1m_at_end')}): encoder {run['encoder_ms']:.0f} ms "
            "(median) -> target "
            f"learn_s_20 <= {run['learn_target_s']:.0f} s; rows: "
            f"{', '.join(r['name'] for r in run['rows'])}"
        )
    print(f"plain SAM held-out IoU {sam_iou:.4f}")
    head = (
        f"{'settings':<20} {'target s':>8} {'blk':>3} {'ep':>3} {'bat':>3} {'lr':>7} {'bf16':>5} "
        f"{'vae':>4} {'train s':>8} {'align s':>8} {'vae s':>6} {'learn_s_20 est':>14} "
        f"{'IoU':>7} {'BIoU':>7} {'gain':>7} {'gain/paper':>10}"
    )
    print(head)
    print("-" * len(head))
    rows = [(run, r) for run in runs for r in run["rows"]]
    for run, r in rows:
        gvp = f"{r['gain'] / paper_gain:.3f}" if paper_gain else "-"
        print(
            f"{r['name']:<20} {run['learn_target_s']:>8.1f} {r['blocks']:>3} {r['epochs']:>3} "
            f"{r['batch_size']:>3} "
            f"{r['lr']:>7.0e} {str(r['bf16']):>5} {r['vae_steps']:>4} {r['train_s']:>8.1f} "
            f"{r['align_s']:>8.1f} "
            f"{r['vae_s']:>6.1f} {r['learn_s_20_est']:>14.1f} {r['iou']:>7.4f} {r['biou']:>7.4f} "
            f"{r['gain']:>7.4f} {gvp:>10}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
