"""Choose the learning schedule on validation data, over seeds (issue 16's gain ratio).

    OMP_NUM_THREADS=1 python benchmarks/tune_schedule_val.py [--candidates A,B,...] [--seeds 3]
    python benchmarks/tune_schedule_val.py --print benchmarks/results/tune-schedule-val.json

``tune_schedule.py`` chose the default on the speed task's TEST slices with one seed. This one
never looks at a test split: for every quality task (``datasets.DOMAIN_TASKS``) it trains on
the quality benchmark's training slices (``evenly(task.train, 16)``, quality.py's
``--max-train``) and scores on its validation slices (up to 8 of the task's OTHER training
slices, quality.py's ``held``), for each candidate schedule and seed (``LearnSettings.seed``).
Tasks with no other training slices (MR breast lesion, MR liver: 11 and 12, all used) hold out
the learner's own share of them instead (``LearnSettings.holdout``: 2 slices, trained on 9/10).

Each training is the product's adapter stage of ``learn_task`` (the same samples, boxes, targets,
seeding and ``train_adapter``), without the router (it does not change the layer); the gain is
the validation IoU of the layer as trained (strength 1: ``choose_strength=False``) minus plain
SAM's on the same slices, through the learner's own ``_evaluate``. The gain with the product's
strength choice is reported too, but it picks the strength on these very slices (optimistic).

Cost: each training's seconds, in the same run, over the current default's (``1b 8e lr1e-3``,
trained in every (task, seed) block), so the machine's load is shared by both. Embeddings come
from the benchmarks' disk cache. The JSON is re-written after every training; ``--resume``
skips the (task, seed, candidate) rows it already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, HERE, evenly, load_tasks, machine  # noqa: E402
from datasets import DOMAIN_TASKS  # noqa: E402

#: quality.py's ``--max-train`` default and its number of held-out (validation) slices
MAX_TRAIN, N_VAL = 16, 8
#: The quality tasks by kind (the summary reports each kind's mean too).
KINDS = {
    "organs": ("CT liver", "MR liver"),
    "lesions": ("MR brain tumour", "CT lung tumour", "MR breast lesion"),
    "microscopy": ("microscopy nuclei",),
}
BASE = "1b 8e lr1e-3"  # the default schedule when this was written: the cost reference
#: name -> LearnSettings overrides (everything else at the library's defaults).
CANDIDATES: dict[str, dict] = {
    "1b 8e lr1e-3": dict(blocks=1, epochs=8, lr=1e-3),
    "1b 12e lr1e-3": dict(blocks=1, epochs=12, lr=1e-3),
    "1b 16e lr1e-3": dict(blocks=1, epochs=16, lr=1e-3),
    "1b 12e lr5e-4": dict(blocks=1, epochs=12, lr=5e-4),
    "1b 16e lr5e-4": dict(blocks=1, epochs=16, lr=5e-4),
    "1b 20e lr5e-4": dict(blocks=1, epochs=20, lr=5e-4),
    "2b 8e lr5e-4": dict(blocks=2, epochs=8, lr=5e-4),
    "2b 10e lr1e-3": dict(blocks=2, epochs=10, lr=1e-3),
}
DEFAULT_RUN = (
    "1b 8e lr1e-3,1b 12e lr1e-3,1b 16e lr1e-3,1b 12e lr5e-4,1b 16e lr5e-4,2b 8e lr5e-4,"
    "2b 10e lr1e-3"
)
MAX_COST = 2.5  # training seconds over the current default's (issue 16's budget)


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def task_data(p, task):
    """(backbone tensors of the training objects, the learner's embeddings and validation
    samples) of one quality task, exactly as ``learn_task(..., holdout=held)`` builds them."""
    from casam import LearnSettings
    from casam.training import _checked_samples, _split, _training_tensors

    train = evenly(task.train, MAX_TRAIN)
    held = evenly([pr for pr in task.train if not any(pr is q for q in train)], N_VAL)
    images = [im for im, _ in train] + [im for im, _ in held]
    masks = [m for _, m in train] + [m for _, m in held]
    # a task whose every training slice is used (MR breast lesion 11, MR liver 12) has no
    # other slices: there the learner's own split (``LearnSettings.holdout``, 2 of 11-12)
    # holds the validation slices out of those, as ``learn_task`` without ``holdout`` does
    used, samples, train_img, hold_img = _checked_samples(
        images, masks, None, None, LearnSettings(), False, len(train) if held else None
    )
    emb = {i: p.embed(images[i]) for i in used}
    order, train_samples, hold_samples = _split(used, samples, train_img, hold_img)
    tensors = _training_tensors(p.backbone, emb, order, train_samples)
    return tensors, emb, hold_samples, (len(train_img), len(hold_img))


def one_training(bb, data, settings) -> dict:
    """Train the adapter as ``learn_task`` does; its validation IoU at each strength."""
    from casam.progress import drive
    from casam.task_adapter import train_adapter
    from casam.training import STRENGTHS, _evaluate, choose_strength

    (z_all, boxes, targets, where), emb, hold_samples, _ = data
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    t0 = time.perf_counter()
    adapter = drive(train_adapter(bb, z_all, boxes, targets, settings, None, where, gen))
    secs = time.perf_counter() - t0
    held = drive(_evaluate(bb, adapter, emb, hold_samples, STRENGTHS))
    chosen = choose_strength(held)
    sam = held[0.0][0]
    return {
        "train_s": round(secs, 2),
        "iou_sam": round(sam, 4),
        "gain": round(held[1.0][0] - sam, 4),
        "gain_biou": round(held[1.0][1] - held[0.0][1], 4),
        "strength": chosen,
        "gain_chosen": round(held[chosen][0] - sam, 4),
    }


def summarise(rows: list[dict], names: list[str], tasks: list[str], seeds: list[int]) -> dict:
    """Per candidate: per-task mean gain and seed range, kind means, the mean over tasks per
    seed (its range is the 'seed spread'), and the training cost relative to ``BASE``."""
    at = {(r["task"], r["seed"], r["candidate"]): r for r in rows}
    out = {}
    for c in names:
        per_task, per_seed = {}, {}
        for t in tasks:
            g = [at[(t, s, c)]["gain"] for s in seeds if (t, s, c) in at]
            if g:
                per_task[t] = {"mean": round(float(np.mean(g)), 4), "seeds": g}
                per_task[t]["spread"] = round(max(g) - min(g), 4)
        for s in seeds:
            g = [at[(t, s, c)]["gain"] for t in tasks if (t, s, c) in at]
            if len(g) == len(tasks):
                per_seed[s] = round(float(np.mean(g)), 4)
        chosen = [at[(t, s, c)]["gain_chosen"] for t in tasks for s in seeds if (t, s, c) in at]
        pairs = [
            (at[(t, s, c)]["train_s"], at[(t, s, BASE)]["train_s"])
            for t in tasks
            for s in seeds
            if (t, s, c) in at and (t, s, BASE) in at
        ]
        kinds = {
            k: round(float(np.mean([per_task[t]["mean"] for t in ts if t in per_task])), 4)
            for k, ts in KINDS.items()
            if any(t in per_task for t in ts)
        }
        complete = len(per_task) == len(tasks)
        # the same seed and tasks as BASE: mean over tasks of (candidate - BASE) per seed
        paired = {
            s: round(
                float(np.mean([at[(t, s, c)]["gain"] - at[(t, s, BASE)]["gain"] for t in tasks])),
                4,
            )
            for s in seeds
            if all((t, s, c) in at and (t, s, BASE) in at for t in tasks)
        }
        out[c] = {
            **CANDIDATES[c],
            "per_task": per_task,
            "kinds": kinds,
            "per_seed_mean": per_seed,
            "mean_gain": round(float(np.mean([v["mean"] for v in per_task.values()])), 4)
            if complete
            else None,
            "seed_spread": round(max(per_seed.values()) - min(per_seed.values()), 4)
            if len(per_seed) > 1
            else None,
            "mean_gain_chosen_strength": round(float(np.mean(chosen)), 4) if chosen else None,
            "paired_vs_base": paired,
            "cost_ratio": round(sum(a for a, _ in pairs) / sum(b for _, b in pairs), 2)
            if pairs
            else None,
            "n_trainings": sum(1 for k in at if k[2] == c),
        }
    return out


def choose(summary: dict) -> dict:
    """The best mean gain within the cost budget; a candidate whose mean is within the best's
    seed spread and has fewer epochs (then lower cost) wins the tie. 'clear' says whether it
    beats ``BASE`` by more than either's seed spread."""
    ok = {
        c: v
        for c, v in summary.items()
        if v["mean_gain"] is not None
        and v["cost_ratio"] is not None
        and v["cost_ratio"] <= MAX_COST
    }
    if not ok:
        return {}
    best = max(ok, key=lambda c: ok[c]["mean_gain"])
    tol = ok[best]["seed_spread"] or 0.0
    tied = [c for c in ok if ok[best]["mean_gain"] - ok[c]["mean_gain"] <= tol]
    pick = min(tied, key=lambda c: (ok[c]["epochs"] * ok[c]["blocks"], ok[c]["cost_ratio"]))
    base = summary.get(BASE, {})
    margin = ok[pick]["mean_gain"] - (base.get("mean_gain") or 0.0)
    spread = max(ok[pick]["seed_spread"] or 0.0, base.get("seed_spread") or 0.0)
    return {
        "best_mean": best,
        "tied_with_best": tied,
        "chosen": pick,
        "gain_over_base": round(margin, 4),
        "seed_spread_used": round(spread, 4),
        "clear": bool(pick != BASE and margin > spread),
    }


def print_table(res: dict) -> None:
    summ, tasks = res["summary"], res["tasks"]
    m = res["machine"]
    runs = "; ".join(
        f"{r['date']} load {r['load_avg_1m_at_start']}..{r.get('load_avg_1m_at_end')}"
        for r in res.get("machine_runs", [m])
    )
    print(
        f"{m['cpu']}, {m['threads']} thread(s); runs: {runs}; seeds {res['seeds']}; gain = "
        "validation IoU - plain SAM (layer at strength 1), per task: mean [seed range]"
    )
    short = {t: t.replace("microscopy ", "micro ").replace(" tumour", " tum.") for t in tasks}
    head = f"{'candidate':<15}" + "".join(f"{short[t]:>22}" for t in tasks)
    head += f"{'organs':>8}{'lesions':>8}{'micro':>8}{'mean':>8}{'spread':>7}{'chosen-s':>9}"
    head += f"{'cost':>6}"
    print(head)
    print("-" * len(head))
    for c, v in summ.items():
        cells = ""
        for t in tasks:
            pt = v["per_task"].get(t)
            cells += (
                f"{pt['mean']:>+9.4f} [{min(pt['seeds']):+.3f},{max(pt['seeds']):+.3f}]"
                if pt
                else f"{'-':>22}"
            )
        k = v["kinds"]

        def f(x, w=8, sign="+", prec=4):
            return format(x, f">{sign}{w}.{prec}f") if x is not None else f"{'-':>{w}}"

        print(
            f"{c:<15}{cells}{f(k.get('organs'))}{f(k.get('lesions'))}{f(k.get('microscopy'))}"
            f"{f(v['mean_gain'])}{f(v['seed_spread'], 7, '')}"
            f"{f(v['mean_gain_chosen_strength'], 9)}{f(v['cost_ratio'], 6, '', 2)}"
        )
    for c, v in summ.items():
        if v.get("paired_vs_base") and c != BASE:
            d = v["paired_vs_base"]
            print(
                f"{c}: minus {BASE}, same seed (mean over tasks): "
                + ", ".join(f"seed {s} {x:+.4f}" for s, x in d.items())
            )
    ch = res.get("choice") or {}
    if ch:
        print(
            f"chosen: {ch['chosen']} (best mean: {ch['best_mean']}; within its seed spread: "
            f"{', '.join(ch['tied_with_best'])}); over {BASE}: {ch['gain_over_base']:+.4f} vs "
            f"seed spread {ch['seed_spread_used']:.4f}: "
            f"{'clearly better' if ch['clear'] else 'not clearly better'}"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--candidates", default=DEFAULT_RUN, help=f"comma-separated, of: {', '.join(CANDIDATES)}"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(DOMAIN_TASKS))
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--json", default=str(HERE / "results" / "tune-schedule-val.json"))
    ap.add_argument("--resume", action="store_true", help="keep the rows of an existing --json")
    ap.add_argument("--print", metavar="JSON", default=None, help="only print an earlier run")
    args = ap.parse_args(argv)
    if args.print:  # the summary of the stored rows, by this version of the code
        res = json.loads(Path(args.print).read_text())
        res["summary"] = summarise(res["rows"], list(res["candidates"]), res["tasks"], res["seeds"])
        res["choice"] = choose(res["summary"])
        print_table(res)
        return 0

    from casam import LearnSettings, Predictor, TaskLibrary

    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    bad = [c for c in names if c not in CANDIDATES]
    if bad:
        ap.error(f"unknown candidates {bad}")
    if BASE not in names:
        names.insert(0, BASE)  # the cost reference
    tnames = [t.strip() for t in args.tasks.split(",") if t.strip()]
    all_tasks = {t.name: t for t in load_tasks(args.data_cache)}
    seeds = list(range(args.seeds))
    out = Path(args.json)
    prev = json.loads(out.read_text()) if args.resume and out.is_file() else {}
    rows = prev.get("rows", [])
    done = {(r["task"], r["seed"], r["candidate"]) for r in rows}
    res = {
        "machine": machine(),
        "machine_runs": prev.get("machine_runs", [prev["machine"]] if prev else []),
        "seeds": seeds,
        "tasks": tnames,
        "max_train": MAX_TRAIN,
        "n_val": N_VAL,
        "base": BASE,
        "max_cost": MAX_COST,
        "candidates": {c: CANDIDATES[c] for c in names},
        "rows": rows,
    }
    p = Predictor(library=TaskLibrary(tempfile.mkdtemp(prefix="casam-val-")), disk_cache=EMB_CACHE)
    res["backbone"] = p.backbone.identity
    data = {}
    for t in tnames:
        log(f"embeddings of {t} ...")
        data[t] = task_data(p, all_tasks[t])
        res.setdefault("slices", {})[t] = dict(zip(("train", "val"), data[t][3], strict=True))

    res["machine_runs"].append(res["machine"])  # one per (resumed) run: when, at what load

    def save():
        # every candidate with rows (a resumed run may train fewer than the first did)
        every = names + sorted({r["candidate"] for r in res["rows"]} - set(names))
        res["candidates"] = {c: CANDIDATES[c] for c in every}
        res["summary"] = summarise(res["rows"], every, tnames, seeds)
        res["choice"] = choose(res["summary"])
        res["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")

    # blocks of (seed, task), every candidate in each: load drifts hit all of them alike
    for seed in seeds:
        for t in tnames:
            for c in names:
                if (t, seed, c) in done:
                    continue
                s = replace(LearnSettings(**CANDIDATES[c]), seed=seed, choose_strength=False)
                row = {"task": t, "seed": seed, "candidate": c}
                row.update(one_training(p.backbone, data[t], s))
                res["rows"].append(row)
                log(json.dumps(row))
                save()
    save()
    print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
