"""Training with point prompts (issue 11): how ``LearnSettings.point_share`` trains, measured.

    nice -n 10 python benchmarks/point_training.py --split validation --seeds 0 1
    nice -n 10 python benchmarks/point_training.py --split test --seeds 0 1 --ways ...
    python benchmarks/point_training.py --split validation --table   # markdown of the results

Runs already in the results file are skipped (a run is a way, a seed and a task), so seeds and
ways can be added later.

Each way of training with points (WAYS) learns each task with ``learn_task`` (the product's
path: held-out share, strength choice) at the current default schedule, per seed; the task is
then measured on its test split: box-only IoU (the ground-truth box of every slice) and the
click protocol of benchmarks/interactive.py (6 slices, the next click at the centre of the
largest error region; IoU after 0/1/3/5 clicks, NoC@85/90) with the product's click rule and
with SAM's point prompts (``ClickSession(mode="points")``: the box and every click, one decode).

``--split validation``: the interactive benchmark's validation organs as tasks (CT spleen, CT
right and left kidney: blocks of 4 axial slices alternate train/test, as datasets.load_tasks
splits CT liver); ``--split test``: CT liver and MR liver (the interactive benchmark's tasks).
The VAE router is trained with few steps (``vae_steps``): it plays no part here (the task is
named), and the adapter is trained before it from its own generator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, heldout_iou, machine  # noqa: E402

#: name: (point_share, share of point batches that keep the box, clicks, loss weight of the
#: clicks, "instead" or "added"). Clicks "random": ``casam.prompts.sample_points`` (1-3, the
#: first positive); "errors": 1-3 on the errors of the batch's box-only prediction (positive on
#: missed object, negative on false positive), like a user correcting it. "instead": a point
#: batch is trained on its clicks only; "added": every batch is trained on its boxes, and a
#: point batch also on its clicks (a second decode; its loss x the weight is added).
#: "errors+logits": clicks on the errors, decoded with the box-only prediction's logits as
#: ``mask_input`` (a user correcting the mask; measured with the clicks alone all the same).
WAYS: dict[str, tuple[float, float, str, float, str]] = {
    "boxes only": (0.0, 1.0, "random", 1.0, "instead"),
    "0.3, box half the time (before)": (0.3, 0.5, "random", 1.0, "instead"),
    "0.3, always with the box": (0.3, 1.0, "random", 1.0, "instead"),
    "0.15, always with the box": (0.15, 1.0, "random", 1.0, "instead"),
    "0.3, with the box, clicks on the box's errors": (0.3, 1.0, "errors", 1.0, "instead"),
    "0.15, with the box, clicks on the box's errors": (0.15, 1.0, "errors", 1.0, "instead"),
    "0.15, with the box and its logits, clicks on its errors": (
        0.15,
        1.0,
        "errors+logits",
        1.0,
        "instead",
    ),  # fmt: skip
    "0.3, with the box, loss x0.5": (0.3, 1.0, "random", 0.5, "instead"),
    "0.3, with the box, added to the box loss": (0.3, 1.0, "random", 1.0, "added"),
    "0.3, with the box, errors, added to the box loss": (0.3, 1.0, "errors", 1.0, "added"),
}


def error_points(logits, targets, input_size: int, gen, most: int = 3):
    """1..``most`` clicks a sample on the errors of ``logits`` (B, 256, 256) against
    ``targets``: positive on missed object, negative on false positive (no error: a positive
    click on the object). Same frames and padding as ``casam.prompts.sample_points``."""
    import torch

    b = targets.shape[0]
    scale = input_size / targets.shape[-1]
    pts, lab = torch.zeros(b, most, 2), -torch.ones(b, most, dtype=torch.int64)
    for i in range(b):
        fg, pred = targets[i] > 0.5, logits[i] > 0
        err = (fg & ~pred) | (pred & ~fg)
        pool = err.nonzero() if err.any() else fg.nonzero()
        if len(pool) == 0:
            continue
        n = int(torch.randint(1, most + 1, (1,), generator=gen))
        for j in range(n):
            r, c = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            pts[i, j] = torch.tensor([float(c), float(r)]) * scale
            lab[i, j] = int(fg[r, c])
    return pts, lab


def patch_way(way: str) -> float:
    """Make ``casam.training`` train its batches the way ``way`` says; its point_share."""
    import torch

    import casam.training as tr
    from casam.prompts import sample_points

    share, box_share, clicks, weight, mode = WAYS[way]

    def batch_loss(backbone, za, boxes, targets, s, gen, decoder):
        tg = targets.to(backbone.device)
        if not (s.point_share > 0 and float(torch.rand(1, generator=gen)) < s.point_share):
            return tr.dice_bce(backbone.decode(za, boxes, decoder=decoder)[0][:, 0], tg)
        box_logits = None
        if clicks.startswith("errors") or mode == "added":
            with torch.set_grad_enabled(mode == "added"):
                box_logits, _ = backbone.decode(za, boxes, decoder=decoder)
        if clicks.startswith("errors"):
            lo = box_logits.detach()[:, 0].float().cpu()
            pts, lab = error_points(lo, targets, backbone.input_size, gen)
        else:
            pts, lab = sample_points(targets, boxes.cpu(), backbone.input_size, gen)
        keep = box_share >= 1 or float(torch.rand(1, generator=gen)) < box_share
        prev = box_logits.detach().float() if clicks == "errors+logits" else None
        logits, _ = backbone.decode(za, boxes if keep else None, pts, lab, prev, decoder=decoder)
        loss = weight * tr.dice_bce(logits[:, 0], tg)
        if mode == "added":
            loss = loss + tr.dice_bce(box_logits[:, 0], tg)
        return loss

    tr._batch_loss = batch_loss
    return share


def validation_tasks():
    """CT spleen, CT kidney R, CT kidney L as tasks (blocks of 4 axial slices)."""
    import datasets
    from datasets import Task, _pairs, block_split, read_nifti_case, volume_slices

    tasks = {t.name: t for t in datasets.load_tasks()}
    out = [tasks["CT spleen"]]
    ct = read_nifti_case("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", None,
                         "example_ct")  # fmt: skip
    for name, lab in (("CT kidney R", 2), ("CT kidney L", 3)):
        tr, te = block_split(volume_slices(ct, ("axial",), labels=(lab,)))
        out.append(Task(name, "CT", _pairs(tr), _pairs(te)))
    return out


def test_tasks():
    import datasets

    tasks = {t.name: t for t in datasets.load_tasks()}
    return [tasks["CT liver"], tasks["MR liver"]]


def measure(p, task, name: str, cap: int) -> dict:
    from interactive import clicks_to_quality

    out = {"box_iou": heldout_iou(p, task.test, name)[0], "box_slices": len(task.test)}
    out["rule"] = clicks_to_quality(p, task.test, name, cap)
    out["points"] = clicks_to_quality(p, task.test, name, cap, mode="points")
    return out


def table(res: dict) -> str:
    """Markdown: per way, box IoU (mean over tasks: over the way's seeds, and per seed) and the
    click figures of both click modes (means over tasks and seeds)."""
    runs = res["runs"]
    ways = list(dict.fromkeys(k.split(" | ")[0] for k in runs))
    tasks = list(dict.fromkeys(k.split(" | ")[2] for k in runs))
    head = "| way | seeds | box IoU (per seed) | " + " | ".join(tasks)
    head += " | rule: IoU 0 / 1 / 3 / 5, NoC@90 | SAM points: IoU 1 / 3 / 5, NoC@90 |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for w in ways:
        seeds = sorted({int(k.split(" | ")[1][5:]) for k in runs if k.startswith(w + " |")})
        seeds = [s for s in seeds if all(f"{w} | seed {s} | {t}" in runs for t in tasks)]
        if not seeds:
            continue
        got = {(s, t): runs[f"{w} | seed {s} | {t}"] for s in seeds for t in tasks}
        per_seed = [sum(got[s, t]["box_iou"] for t in tasks) / len(tasks) for s in seeds]
        per_task = [sum(got[s, t]["box_iou"] for s in seeds) / len(seeds) for t in tasks]

        def m(mode, key, got=got):
            return sum(v[mode][key] for v in got.values()) / len(got)

        rule = " / ".join(f"{m('rule', f'iou_after_{n}'):.3f}" for n in (0, 1, 3, 5))
        pts = " / ".join(f"{m('points', f'iou_after_{n}'):.3f}" for n in (1, 3, 5))
        lines.append(
            f"| {w} | {len(seeds)} | **{sum(per_seed) / len(seeds):.3f}** ("
            + ", ".join(f"{v:.3f}" for v in per_seed)
            + ") | "
            + " | ".join(f"{v:.3f}" for v in per_task)
            + f" | {rule}, {m('rule', 'noc90'):.2f} | {pts}, {m('points', 'noc90'):.2f} |"
        )
    return "\n".join(lines)


def task_table(res: dict) -> str:
    """Markdown: per task and way, means over the way's seeds (box IoU; each click mode's IoU
    after 0/1/3/5 clicks, NoC@85/90 and NoC@90 if clicks changed nothing)."""
    runs = res["runs"]
    lines = [
        "| task | way | seeds | box IoU | click mode | IoU 0 / 1 / 3 / 5 | NoC@85 | NoC@90 "
        "| no change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tasks = list(dict.fromkeys(k.split(" | ")[2] for k in runs))
    ways = list(dict.fromkeys(k.split(" | ")[0] for k in runs))
    for t in tasks:
        for w in ways:
            rows = [v for k, v in runs.items() if k.startswith(w + " |") and k.endswith("| " + t)]
            if not rows:
                continue
            box = sum(r["box_iou"] for r in rows) / len(rows)
            for mode, title in (("rule", "rule"), ("points", "SAM points")):

                def m(key, rows=rows, mode=mode):
                    return sum(r[mode][key] for r in rows) / len(rows)

                ious = " / ".join(f"{m(f'iou_after_{n}'):.3f}" for n in (0, 1, 3, 5))
                lines.append(
                    f"| {t} | {w} | {len(rows)} | {box:.3f} | {title} | {ious} | "
                    f"{m('noc85'):.1f} | {m('noc90'):.1f} | {m('noc90_no_change'):.1f} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("validation", "test"), default="validation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    ap.add_argument("--cap", type=int, default=None, help="click cap (validation 10, test 20)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out")
    args = ap.parse_args(argv)
    cap = args.cap or (10 if args.split == "validation" else 20)
    out = Path(args.out or Path(__file__).parent / "results" / f"point-training-{args.split}.json")
    if args.table:
        res = json.loads(out.read_text())
        print(table(res) + "\n\n" + task_table(res))
        return 0

    from casam import LearnSettings, Predictor, learn_task

    tasks = validation_tasks() if args.split == "validation" else test_tasks()
    res = json.loads(out.read_text()) if out.exists() else {}
    res.setdefault("machine", machine())
    res["cap"] = cap
    runs = res.setdefault("runs", {})
    p0 = Predictor(library=False, disk_cache=EMB_CACHE)
    for way in args.ways:
        for seed in args.seeds:
            for task in tasks:
                key = f"{way} | seed {seed} | {task.name}"
                if key in runs:
                    continue
                with tempfile.TemporaryDirectory() as lib:
                    p = Predictor(backbone=p0.backbone, library=lib, disk_cache=EMB_CACHE)
                    share = patch_way(way)
                    s = LearnSettings(point_share=share, seed=seed, vae_steps=50)
                    t0 = time.perf_counter()
                    info = learn_task([a for a, _ in task.train], [b for _, b in task.train],
                                      task.name, predictor=p, settings=s)  # fmt: skip
                    row = {"train_s": round(time.perf_counter() - t0, 1)}
                    row["strength"] = info.settings["strength"]
                    row.update(measure(p, task, task.name, cap))
                    row["plain_box_iou"] = heldout_iou(p, task.test, None)[0]
                runs[key] = row
                res["load_avg_1m_now"] = round(os.getloadavg()[0], 2)
                out.write_text(json.dumps(res, indent=1))
                brief = {k: row[k] for k in ("train_s", "strength", "box_iou")}
                brief["rule"] = {k: round(row["rule"][k], 3) for k in ("iou_after_1", "noc90")}
                brief["points"] = {k: round(row["points"][k], 3) for k in ("iou_after_1", "noc90")}
                print(key, json.dumps(brief), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
