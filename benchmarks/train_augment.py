"""Does training the adapter also on augmented copies of the training slices
(``LearnSettings.augment``) lift it above plain SAM on a new patient? (issue 12)

    python benchmarks/train_augment.py                 # validation: val and valaug
    python benchmarks/train_augment.py --table         # markdown tables from the JSON
    python benchmarks/train_augment.py --test          # test split (after the rule is applied)

For each task of the quality benchmark (``datasets.DOMAIN_TASKS``; splits of
``routing_data.routing_tasks(None, max_val=8)`` as ``adapter_kind.py``) a task is learned with
``casam.training.learn_task`` from ``fit`` with ``holdout=val`` (so the strength is chosen on the
real held-out slices), default settings except ``augment``, ``epochs`` and ``seed``, into a
scratch library per variant and seed. Plain SAM and the task are scored with the ground-truth
box (``_common.heldout_iou``) on

- ``val``: the held-out slices (none for MR breast lesion and MR liver: every slice trains),
- ``valaug``: two augmented copies of each (``augmented_pairs(val, 2, seed=100 + i)``, exactly
  ``adapter_kind.py``'s new-patient proxy),
- ``test``: the task's test split (a new patient for the two tumour tasks), only with --test.

Variants: ``a0`` = augment 0 (the default today), ``a1`` = augment 1, ``a2`` = augment 2 (all
16 epochs), ``a2e6`` = augment 2 with 6 epochs (about today's number of optimiser steps).
Seeds 0 and 1 (2 if time allows).

DECISION RULE (fixed before any test figure was looked at): over the seeds for which every
variant has all six tasks, a variant replaces the default ``a0`` if its mean over tasks (the
four with held-out slices) of (val + valaug) / 2, averaged over seeds, is higher than ``a0``'s,
and no task's val (averaged over seeds) is more than 2 points below ``a0``'s. Among winners the
cheapest (mean training seconds) is picked. The test split is scored afterwards and reported
whatever it says; it does not change the pick.

Writes results/train-augment.json after every training (re-runs skip what is done).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, HERE, heldout_iou, machine  # noqa: E402

VARIANTS = {"a0": (0, 16), "a1": (1, 16), "a2": (2, 16), "a2e6": (2, 6)}  # augment, epochs
#: Run and tabled beside them, but not candidates of the rule: added by the lead after seed 0 of
#: the variants above was seen, as the variant with exactly today's image passes (1 copy, 8
#: epochs: 16 x 2 = 16 x 1) in case the pick cost too much learning time (issue 16).
EXTRA = {"a1e8": (1, 8)}
ALL = {**VARIANTS, **EXTRA}
RUN_ORDER = ("a0", "a2e6", "a1", "a2")  # cheapest first
WORK = Path(os.environ.get("CASAM_BENCH_WORK", "~/.cache/napari-casam/bench-aug")).expanduser()
JSON = HERE / "results" / "train-augment.json"
#: its section of docs/benchmark-quality.md (written by hand from --table; quality.py keeps it)
BEGIN, END = "<!-- train_augment.py: begin -->", "<!-- train_augment.py: end -->"


def score(p, pairs, task: str | None) -> float | None:
    """Mean IoU in points of ``task`` (None: plain SAM) on (image, mask) pairs; None if none."""
    return round(100 * heldout_iou(p, pairs, task)[0], 2) if pairs else None


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(run: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=1))
    tmp.replace(path)


def tasks():
    import datasets
    import routing_data as rd

    out = [t for t in rd.routing_tasks(None, max_val=8) if t.name in datasets.DOMAIN_TASKS]
    return [
        (t, rd.augmented_pairs(t.val, 2, seed=100 + i) if t.val else []) for i, t in enumerate(out)
    ]


def predictor_for(variant: str, seed: int):
    from casam import Predictor, TaskLibrary

    lib = WORK / f"{variant}-seed{seed}"
    lib.mkdir(parents=True, exist_ok=True)
    return Predictor(library=TaskLibrary(lib), disk_cache=EMB_CACHE)


def validate(run: dict, seeds, variants, path: Path) -> None:
    from casam import LearnSettings
    from casam.training import learn_task

    data = tasks()
    for seed in seeds:
        for v in variants:
            p = predictor_for(v, seed)
            for t, aug in data:
                row = run.setdefault("runs", {}).setdefault(v, {}).setdefault(str(seed), {})
                if t.name in row:
                    continue
                augment, epochs = ALL[v]
                s = LearnSettings(augment=augment, epochs=epochs, seed=seed)
                t0 = time.perf_counter()
                info = learn_task(
                    [im for im, _ in t.fit],
                    [m for _, m in t.fit],
                    t.name,
                    predictor=p,
                    settings=s,
                    overwrite=True,
                    holdout=([im for im, _ in t.val], [m for _, m in t.val]),
                )
                wall = round(time.perf_counter() - t0, 1)
                sam = run.setdefault("sam", {}).setdefault(t.name, {})
                if "val" not in sam:
                    sam["val"], sam["valaug"] = score(p, t.val, None), score(p, aug, None)
                row[t.name] = {
                    "val": score(p, t.val, t.name),
                    "valaug": score(p, aug, t.name),
                    "strength": info.settings["strength"],
                    "train_seconds": info.settings["train_seconds"],
                    "wall_seconds": wall,
                    "n_fit": len(t.fit),
                    "load_avg": [round(x, 2) for x in os.getloadavg()],
                }
                save(run, path)
                print(v, seed, t.name, json.dumps(row[t.name]), flush=True)


def test(run: dict, path: Path) -> None:
    data = tasks()
    for v, by_seed in run.get("runs", {}).items():
        for seed, rows in by_seed.items():
            p = predictor_for(v, int(seed))
            for t, _ in data:
                if t.name not in rows or "test" in rows[t.name]:
                    continue
                sam = run["sam"][t.name]
                if "test" not in sam:
                    sam["test"] = score(p, t.test, None)
                rows[t.name]["test"] = score(p, t.test, t.name)
                save(run, path)
                print(v, seed, t.name, "test", rows[t.name]["test"], flush=True)


def complete_seeds(run: dict) -> list[str]:
    """Seeds for which every variant has every task."""
    runs = run.get("runs", {})
    names = list(run.get("sam", {}))
    seeds = set.intersection(*(set(runs.get(v, {})) for v in VARIANTS)) if runs else set()
    return sorted(s for s in seeds if all(set(names) <= set(runs[v][s]) for v in VARIANTS))


def means(run: dict, v: str, seeds, key: str) -> dict[str, float | None]:
    """Per task, ``key`` averaged over ``seeds``."""
    out = {}
    for n in run["sam"]:
        xs = [run["runs"][v][s][n].get(key) for s in seeds]
        out[n] = None if any(x is None for x in xs) else statistics.mean(xs)
    return out


def decide(run: dict) -> dict:
    """The docstring's rule on the complete seeds."""
    seeds = complete_seeds(run)
    if not seeds:
        return {"seeds": [], "pick": None}
    score_of, ok = {}, {}
    val0 = means(run, "a0", seeds, "val")
    for v in VARIANTS:
        val, va = means(run, v, seeds, "val"), means(run, v, seeds, "valaug")
        both = [(val[n] + va[n]) / 2 for n in val if val[n] is not None and va[n] is not None]
        score_of[v] = statistics.mean(both)
        ok[v] = all(val[n] >= val0[n] - 2 for n in val if val[n] is not None)
    cost = {v: statistics.mean(means(run, v, seeds, "train_seconds").values()) for v in VARIANTS}
    winners = [v for v in VARIANTS if v != "a0" and score_of[v] > score_of["a0"] and ok[v]]
    pick = min(winners, key=cost.get) if winners else "a0"
    return {"seeds": seeds, "score": score_of, "val_ok": ok, "train_s": cost, "pick": pick}


def fmt(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def table(run: dict) -> str:
    seeds = complete_seeds(run)
    d = decide(run)
    lines = [f"Seeds averaged: {', '.join(seeds) or 'none complete'}", ""]
    for key in ("val", "valaug", "test"):
        names = [n for n in run.get("sam", {}) if run["sam"][n].get(key) is not None]
        if not seeds or not names:
            continue
        if any(means(run, v, seeds, key)[n] is None for v in ALL for n in names):
            continue
        lines += [f"**{key}** (IoU %, gain over plain SAM in brackets)", ""]
        lines += ["| task | SAM | " + " | ".join(ALL) + " |"]
        lines += ["|---|---:|" + "---:|" * len(ALL)]
        per = {v: means(run, v, seeds, key) for v in ALL}
        for n in names:
            sam = run["sam"][n][key]
            cells = [f"{per[v][n]:.1f} ({per[v][n] - sam:+.1f})" for v in ALL]
            lines.append(f"| {n} | {sam:.1f} | " + " | ".join(cells) + " |")
        sam_m = statistics.mean(run["sam"][n][key] for n in names)
        cells = []
        for v in ALL:
            m = statistics.mean(per[v][n] for n in names)
            cells.append(f"{m:.1f} ({m - sam_m:+.1f})")
        lines += [f"| mean | {sam_m:.1f} | " + " | ".join(cells) + " |", ""]
    if seeds:
        tr = {v: means(run, v, seeds, "train_seconds") for v in ALL}
        lines += ["**training seconds** (learn_task, mean over seeds)", ""]
        lines += ["| task | " + " | ".join(ALL) + " |", "|---|" + "---:|" * len(ALL)]
        for n in run["sam"]:
            lines.append(f"| {n} | " + " | ".join(fmt(tr[v][n]) for v in ALL) + " |")
        st = {v: means(run, v, seeds, "strength") for v in ALL}
        lines += ["", "**chosen strength** (mean over seeds)", ""]
        lines += ["| task | " + " | ".join(ALL) + " |", "|---|" + "---:|" * len(ALL)]
        for n in run["sam"]:
            lines.append(f"| {n} | " + " | ".join(f"{st[v][n]:.2f}" for v in ALL) + " |")
        lines += ["", "Rule: " + json.dumps(d, default=lambda x: round(x, 2))]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variants", default=",".join(RUN_ORDER))
    ap.add_argument("--json", default=str(JSON))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the tables and the rule's pick")
    ap.add_argument("--test", action="store_true", help="score the learned tasks' test splits")
    args = ap.parse_args(argv)
    path = Path(args.json)
    run = load(path)
    if args.table:
        print(table(run))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    run.setdefault("machine", machine())
    run.setdefault("load_avg_at_start", []).append([round(x, 2) for x in os.getloadavg()])
    if args.test:
        test(run, path)
    else:
        seeds = [int(x) for x in args.seeds.split(",")]
        validate(run, seeds, args.variants.split(","), path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
