"""Does the encoder runtime change what a learned task gains? (issue 16's training guard)

    OMP_NUM_THREADS=1 python benchmarks/learn_gain_seeds.py --runtimes openvino-bf16,openvino \
        --seeds 3 --json benchmarks/results/learn-gain-seeds-bf16.json
    python benchmarks/learn_gain_seeds.py --runtimes openvino-bf16 --schedules default,paper \
        --seeds 3 --json benchmarks/results/learn-gain-seeds-schedules.json
    python benchmarks/learn_gain_seeds.py --runtimes openvino-bf16 --schedules default,paper \
        --paper-from benchmarks/results/learn-gain-seeds-schedules.json --json OUT.json

For each runtime and seed: learn the speed benchmark's task (CT liver, 20 training slices,
default LearnSettings, or with ``--schedules`` also the paper's ``LearnSettings.paper()`` or a
candidate of ``tune_schedule_val.CANDIDATES`` such as "1b 16e lr1e-3", but the seed) from that
runtime's embeddings, then the held-out IoU gain over plain SAM on the task's 20 test slices
with the same runtime's embeddings. One training's
gain moves by several points with the seed, so runtimes are compared on the mean over seeds.
A quality figure: it does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import heldout_iou, machine, speed_slices  # noqa: E402
from tune_schedule_val import CANDIDATES  # noqa: E402


def gains(
    runtime: str, seeds: int, train, held, schedule: str = "default"
) -> tuple[list[float], float]:
    from casam import LearnSettings, Predictor, TaskLibrary
    from casam.sam import get_backbone
    from casam.training import learn_task

    bb = get_backbone("litemedsam", device="cpu", runtime=runtime)
    out, sam = [], float("nan")
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as d:
            p = Predictor(bb, library=TaskLibrary(d))
            base = (
                LearnSettings.paper()
                if schedule == "paper"
                else LearnSettings(**CANDIDATES.get(schedule, {}))
            )
            settings = replace(base, seed=seed)
            learn_task(
                [i for i, _ in train], [m for _, m in train], "t", predictor=p, settings=settings
            )
            sam = heldout_iou(p, held, "sam")[0]
            out.append(round(heldout_iou(p, held, "t")[0] - sam, 4))
            print(
                f"{runtime} {schedule} seed {seed}: gain {out[-1]:+.4f}",
                file=sys.stderr,
                flush=True,
            )
    return out, round(sam, 4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtimes", default="openvino-bf16,openvino")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--schedules",
        default="default",
        help="comma-separated: default, paper, or names of tune_schedule_val.CANDIDATES",
    )
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument(
        "--paper-from",
        metavar="JSON",
        default=None,
        help="take the paper schedule's gains from this earlier run instead of training them",
    )
    args = ap.parse_args(argv)
    train, held = speed_slices(None, 20)
    res: dict = {"machine": machine(), "gain": {}, "heldout_iou_sam": {}}
    schedules = [x.strip() for x in args.schedules.split(",") if x.strip()]
    bad = [x for x in schedules if x not in ("default", "paper", *CANDIDATES)]
    if bad:
        raise SystemExit(f"unknown schedules {bad}: choose default, paper, {', '.join(CANDIDATES)}")
    old = json.loads(Path(args.paper_from).read_text()) if args.paper_from else None
    if old:
        res["paper_from"] = {"file": args.paper_from, "date": old["machine"]["date"]}
    for rt in args.runtimes.split(","):
        for sch in schedules:
            key = rt if sch == "default" else f"{rt} {sch}"  # the earlier files' keys stay
            if sch == "paper" and old:
                if len(old["gain"][key]) != args.seeds:
                    raise SystemExit(f"{args.paper_from} has {len(old['gain'][key])} seeds")
                res["gain"][key] = old["gain"][key]
                res["heldout_iou_sam"][key] = old["heldout_iou_sam"][key]
                continue
            res["gain"][key], res["heldout_iou_sam"][key] = gains(rt, args.seeds, train, held, sch)
    if old:
        for rt in args.runtimes.split(","):
            b = res["heldout_iou_sam"].get(f"{rt} paper")
            for k, a in res["heldout_iou_sam"].items():
                if (
                    b is not None
                    and k != f"{rt} paper"
                    and k.split(" ")[0] == rt
                    and abs(a - b) > 1e-3
                ):
                    raise SystemExit(
                        f"plain SAM {a} here, {b} in {args.paper_from}: not comparable"
                    )
    res["mean"] = {k: round(float(np.mean(g)), 4) for k, g in res["gain"].items()}
    for rt in args.runtimes.split(","):
        if "default" in schedules and "paper" in schedules:
            res.setdefault("gain_ratio_default_vs_paper", {})[rt] = round(
                res["mean"][rt] / res["mean"][f"{rt} paper"], 3
            )
        for sch in schedules:
            if sch not in ("default", "paper") and "paper" in schedules:
                res.setdefault("gain_ratio_vs_paper", {})[f"{rt} {sch}"] = round(
                    res["mean"][f"{rt} {sch}"] / res["mean"][f"{rt} paper"], 3
                )
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
