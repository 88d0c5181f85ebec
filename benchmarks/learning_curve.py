"""Learning curve: how many corrected slices before a task helps (issue 12).

    nice -n 19 python benchmarks/learning_curve.py            # runs what is missing, then reports
    python benchmarks/learning_curve.py --report-only         # only re-write the report

For each task, an Alignment Layer is trained (``casam.training.train_alignment``, the loop of
``learn_task``, the library's default schedule and its augmented copies of each training slice)
on 5, 10, 20 and 40 training slices (evenly
spread over the task's training split, as quality.py picks them; sizes the split cannot give are
left out), and scored on the task's fixed test split (by patient for the two lesion tasks, so
the gain is the one a new patient sees): mean IoU with the ground-truth box, minus plain SAM's.
Organs and lesions are reported apart.

Lesion variants, at 10 slices (cheap, not a search): twice the epochs (a longer schedule for
small structures) and point prompts in 30% of the training batches (``point_share=0.3``, the
paper's "random boxes or points").

Every point is one training; results are kept in ``--json`` as they come (a rerun resumes and
skips the points already there, unless the engine's training code changed). Embeddings come
from the benchmarks' disk cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    EMB_CACHE,
    HERE,
    Samples,
    evenly,
    layer_scores,
    load_tasks,
    machine,
    train_layer,
)

from casam.config import LearnSettings  # noqa: E402

SIZES = (5, 10, 20, 40)
TASKS = {
    "CT liver": "organ",
    "MR liver": "organ",
    "MR brain tumour": "lesion",
    "CT lung tumour": "lesion",
}
VARIANT_SIZE = 10
#: lesion variants at VARIANT_SIZE slices: twice the default schedule's epochs, click prompts
VARIANTS = {
    "epochs x2": {"epochs": 2 * LearnSettings().epochs},
    "points 30%": {"point_share": 0.3},
}
BEGIN, END = "<!-- learning_curve.py: begin -->", "<!-- learning_curve.py: end -->"


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def training_fingerprint() -> str:
    """The engine code that decides a trained layer (a change invalidates the kept points)."""
    import hashlib

    import casam

    root = Path(casam.__file__).parent
    h = hashlib.sha256()
    for mod in ("alignment", "training", "config", "sam", "prompts", "augment"):
        h.update((root / f"{mod}.py").read_bytes())
    return h.hexdigest()[:16]


def plan(tasks: dict, seeds: list[int]) -> list[dict]:
    """Every point to run: (task, n slices, variant, seed)."""
    out = []
    for seed in seeds:
        for name, kind in TASKS.items():
            avail = len(tasks[name].train)
            runs = [(n, "default") for n in SIZES if n <= avail]
            if kind == "lesion" and VARIANT_SIZE <= avail:
                runs += [(VARIANT_SIZE, v) for v in VARIANTS]
            out += [
                {"task": name, "kind": kind, "n": n, "variant": v, "seed": seed} for n, v in runs
            ]
    return out


def key(pt: dict) -> str:
    return f"{pt['task']}|{pt['n']}|{pt['variant']}|{pt['seed']}"


def run_point(p, task, pt: dict, sam_iou: float) -> dict:
    from casam.config import LearnSettings

    s = LearnSettings(**VARIANTS.get(pt["variant"], {}), seed=pt["seed"])
    t0 = time.perf_counter()
    samples = Samples.from_pairs(p, evenly(task.train, pt["n"]), s)  # with s.augment copies
    layer = train_layer(p.backbone, samples, s)
    layer.eval()
    ious = [a for a, _ in layer_scores(p, layer, task.test)]
    return {
        **pt,
        "iou": float(np.mean(ious)),
        "iou_sam": sam_iou,
        "gain_points": round((float(np.mean(ious)) - sam_iou) * 100, 2),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (one training each)")
    ap.add_argument("--json", default=str(HERE / "results" / "learning_curve.json"))
    ap.add_argument("--md", default=str(HERE.parent / "docs" / "benchmark-quality.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    path = Path(args.json)
    run = json.loads(path.read_text()) if path.is_file() else {}
    if not args.report_only:
        run = measure(args, run, path)
    import routing

    section = render(run)
    routing.write_section(Path(args.md), section, BEGIN, END)
    print(section)
    return 0


def measure(args, run: dict, path: Path) -> dict:
    import torch

    from casam import Predictor

    torch.set_num_threads(1)
    fp = training_fingerprint()
    if run.get("engine") != fp:
        run = {"engine": fp, "points": {}, "sam": {}}
    run["machine"] = machine()
    tasks = {t.name: t for t in load_tasks(args.data_cache)}
    p = Predictor(library=False, disk_cache=EMB_CACHE)
    for name in TASKS:
        if name not in run["sam"]:
            run["sam"][name] = float(
                np.mean([a for a, _ in layer_scores(p, None, tasks[name].test)])
            )
    todo = plan(tasks, [int(x) for x in args.seeds.split(",")])
    todo = [pt for pt in todo if key(pt) not in run["points"]]
    log(f"{len(todo)} trainings to run")
    for i, pt in enumerate(todo):
        res = run_point(p, tasks[pt["task"]], pt, run["sam"][pt["task"]])
        run["points"][key(pt)] = res
        log(f"  {i + 1}/{len(todo)} {key(pt)}: gain {res['gain_points']:+.1f} points")
        run["machine"]["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, indent=1))
        tmp.replace(path)
    return run


def _mean_gain(points: list[dict]) -> str:
    return f"{np.mean([q['gain_points'] for q in points]):+.1f}" if points else "–"


def render(run: dict) -> str:
    pts = list(run.get("points", {}).values())
    m, d = run.get("machine", {}), LearnSettings()
    L = ["## Learning curve (`benchmarks/learning_curve.py`)\n"]
    L.append(
        "Held-out IoU gain over plain SAM (IoU points, mean over the task's test split, "
        "ground-truth boxes) of an Alignment Layer trained on N slices with the default schedule "
        f"({d.epochs} epochs, {d.augment} augmented copies of each slice, {d.blocks} block). "
        "Lesion test splits "
        "are another patient. "
        f"Seeds: {sorted({q['seed'] for q in pts})}; machine: {m.get('cpu')}, 1 thread, load "
        f"average {m.get('load_avg_1m_at_start')} at start, {m.get('load_avg_1m_at_end')} at end "
        "(times are not figures of record).\n"
    )
    default = [q for q in pts if q["variant"] == "default"]
    L.append("| task | kind | plain SAM IoU | " + " | ".join(f"{n} slices" for n in SIZES) + " |")
    L.append("|---|---|---|" + "---|" * len(SIZES))
    for name, kind in TASKS.items():
        cells = [
            _mean_gain([q for q in default if q["task"] == name and q["n"] == n]) for n in SIZES
        ]
        sam = run.get("sam", {}).get(name)
        L.append(f"| {name} | {kind} | {sam * 100:.1f} | " + " | ".join(cells) + " |")
    for kind in ("organ", "lesion"):
        cells = [
            _mean_gain([q for q in default if q["kind"] == kind and q["n"] == n]) for n in SIZES
        ]
        L.append(f"| **{kind}s (mean)** | | | " + " | ".join(cells) + " |")
    var = [q for q in pts if q["variant"] != "default"]
    if var:
        L.append(f"\nLesion variants at {VARIANT_SIZE} slices (gain in IoU points):\n")
        L.append("| task | default | " + " | ".join(VARIANTS) + " |")
        L.append("|---|---|" + "---|" * len(VARIANTS))
        for name, kind in TASKS.items():
            if kind != "lesion":
                continue
            sel = [q for q in pts if q["task"] == name and q["n"] == VARIANT_SIZE]
            cells = [
                _mean_gain([q for q in sel if q["variant"] == v]) for v in ("default", *VARIANTS)
            ]
            L.append(f"| {name} | " + " | ".join(cells) + " |")
    for note in run.get("notes", []):
        L.append(f"\n> {note}")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
