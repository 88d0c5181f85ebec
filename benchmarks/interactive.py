"""Interactive 3-D: one box through a volume (propagation), clicks to quality, and their times.

    nice -n 10 python benchmarks/interactive.py [--out benchmarks/results/interactive.json]
    nice -n 10 python benchmarks/interactive.py --only tune plain   # some sections; they merge
    nice -n 10 python benchmarks/interactive.py --times-only        # the times of record only

Volumes (real, see datasets.py), axial slices from 3 before the structure's first to 3 after its
last. VALIDATION (the propagation settings are chosen here only): CT spleen (example_ct_sm), CT
right and left kidney (example_ct), MR right kidney (example_mr_sm). TEST: CT liver, MR liver,
MR spleen and the tumours of the test cases (lung1, brain2).

Sections: ``diagnose`` (per slice, validation: propagated vs ground truth, SAM's estimate, SAM
with the GT box), ``tune`` (each way of carrying the box run once with no stop rule, then cut by
each stop rule: exact, a stop only ends a direction), ``plain`` (3-D from one box with plain
SAM, beside the bound "GT box on every slice" and interpolation of the boxes of the first and
last slice), ``times`` (propagation s/slice uncached and cached, a click on a cached slice
with the product's rule, with SAM boxes forced and with SAM point prompts, and the decoder
calls of each click), ``learned`` (the box-only check and the learned tasks' 3-D routed per
slice and by volume majority), ``learned_3d`` (the learned tasks' 3-D alone), ``box_check``
(the box-only check alone: box IoU of tasks learned with and without click prompts),
``click_tune`` (every click rule of CLICK_RULES on 6
slices of each validation organ, plain SAM, cap 10; then the best few on the validation organ's
learned task) and ``clicks`` (IoU after 1, 3, 5 clicks at the centre of the largest error
region, NoC@85/90 capped at 20, on each task's test split: plain SAM and learned tasks, the
product's rule and SAM's point prompts). Tasks are learned with the default LearnSettings on
each task's training split (datasets.load_tasks), with point prompts (point_share 0.3) and
from boxes only (point_share 0, the default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, box_of, heldout_iou, machine  # noqa: E402

LIB = Path("~/.cache/napari-casam/bench-interactive-lib").expanduser()
LIB_BOX_ONLY = LIB.with_name("bench-interactive-lib-box-only")
CT_FULL = ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")
MR_SM = ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")
LEARN_TASKS = ("CT liver", "MR liver")  # learned with click prompts (point_share 0.3)
BOX_ONLY_TASKS = ("CT liver",)  # also learned without, for the box-only check
CLICK_TASKS = ("CT liver", "MR liver")
VOLUMES = {  # name: (reader args, label, role, task)
    "CT spleen": (("example_ct_sm.nii.gz", "example_seg.nii.gz"), 1, "validation", None),
    "CT kidney R": (CT_FULL, 2, "validation", None),
    "CT kidney L": (CT_FULL, 3, "validation", None),
    "MR kidney R": (MR_SM, 2, "validation", None),
    "CT liver": (CT_FULL, 5, "test", "CT liver"),
    "MR liver": (MR_SM, 5, "test", "MR liver"),
    "MR spleen": (MR_SM, 1, "test", None),
    "CT lung tumour (lung1)": ("lung1", 1, "test", None),
    "MR brain tumour (brain2)": ("brain2", 1, "test", None),
}
VALIDATION = [n for n, v in VOLUMES.items() if v[2] == "validation"]
#: The stop rules and box carrying of the first implementation (before this benchmark's
#: diagnosis): the rows "before" in docs/benchmark-interactive.md.
BEFORE = {
    "min_score_ratio": 0.0,
    "min_overlap": 0.0,
    "max_shift": float("inf"),
    "box_momentum": 0.0,
}
#: How the box is carried to the next slice: each is run once per validation volume with no
#: stop rule, then every stop rule of STOP_RULES is applied to that run (exact: a stop rule only
#: ends a direction, it never changes a slice before it).
CARRY = {
    "seed margins + 2 px": {},
    "fixed 10% margin": {"seed_margins": False, "box_margin": 0.1, "box_pad": 0.0},
    "seed margins + neighbour's logits": {"use_logits": True},
    "seed margins + interior point": {"interior_point": True},
    "seed margins, box momentum 0.5": {"box_momentum": 0.5},
}
_OFF = {"min_score": 0.0, "min_shrink": 1e-6, "max_growth": 1e6}
STOP_RULES = {
    "before: empty, score < 0.5, area x0.2 / x2": {},
    "score < 0.7": {"min_score": 0.7},
    "score < 0.85 x seed's": {"min_score_ratio": 0.85},
    "score < 0.9 x seed's": {"min_score_ratio": 0.9},
    "IoU with neighbour < 0.5": {"min_overlap": 0.5},
    "IoU with neighbour < 0.6": {"min_overlap": 0.6},
    "intensity shift > 1 SD": {"max_shift": 1.0},
    "intensity shift > 1.5 SD": {"max_shift": 1.5},
    "intensity shift > 2 SD (default)": {"max_shift": 2.0},
    "intensity shift > 3 SD": {"max_shift": 3.0},
    "shift > 2 SD + IoU < 0.6": {"max_shift": 2.0, "min_overlap": 0.6},
}


def axial_volume(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(Z, H, W) image and bool ground truth, slices around the structure (3 either side)."""
    import datasets

    src, label, _, _ = VOLUMES[name]
    vol = datasets.read_nrrd_case(src) if isinstance(src, str) else datasets.read_nifti_case(*src)
    z = [k for k in datasets.candidate_indices(vol, "axial", (label,))]
    ks = range(max(0, z[0] - 3), min(vol.image.shape[2], z[-1] + 4))
    pairs = [datasets.plane_slice(vol, "axial", k, (label,)) for k in ks]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def per_slice_boxes(p, vol, boxes: dict[int, np.ndarray], task) -> np.ndarray:
    out = np.zeros(vol.shape[:3], bool)
    for k, b in boxes.items():
        out[k] = p.predict_embedding(p.embed(vol[k]), b, task).masks[0]
    return out


def interpolated_boxes(gt: np.ndarray) -> dict[int, np.ndarray]:
    """Boxes on the first and last slice with the structure, linearly interpolated between."""
    ks = [k for k in range(len(gt)) if gt[k].any()]
    a, b = box_of(gt[ks[0]]), box_of(gt[ks[-1]])
    return {k: a + (b - a) * (k - ks[0]) / max(1, ks[-1] - ks[0]) for k in range(ks[0], ks[-1] + 1)}


def three_d(p, name: str, task, settings: dict, before: bool = False, known=None) -> dict:
    """One box on the largest slice, propagated (per-slice and, with a routed task, majority
    routing), beside the every-slice bound and interpolation; ``before``: also the settings of
    the first implementation. ``known``: figures that do not depend on the settings, from an
    earlier run of the same code (``--reuse``), not computed again."""
    from casam.propagate import PropagateSettings, propagate

    vol, gt = axial_volume(name)
    k = int(np.argmax(gt.sum((1, 2))))
    every = {j: box_of(gt[j]) for j in range(len(gt)) if gt[j].any()}
    row = {"slices": len(vol), "seed": k, "task": task, **(known or {})}
    if "gt_box_every_slice" not in row:
        row["gt_box_every_slice"] = dice(per_slice_boxes(p, vol, every, task), gt)
    if "interpolated_boxes" not in row:
        row["interpolated_boxes"] = dice(per_slice_boxes(p, vol, interpolated_boxes(gt), task), gt)
    runs = [(r, settings, "") for r in (("slice", "majority") if task == "auto" else ("slice",))]
    runs += [("slice", BEFORE, "_before")] if before and "one_box_slice_before" not in row else []
    for routing, kw, suffix in runs:
        s = PropagateSettings(**{**kw, "routing": routing})
        r = propagate(p, vol, k, box=box_of(gt[k]), task=task, settings=s)
        row[f"one_box_{routing}{suffix}"] = dice(r.masks, gt)
        row[f"stops_{routing}{suffix}"] = r.stops
        row[f"tasks_{routing}{suffix}"] = {str(t): n for t, n in r.tasks.items()}
    # The done bar's wording ("one box on the middle slice"), beside the protocol's seed (the
    # largest slice): the middle of the structure's first..last slice, routed per slice.
    ks = np.flatnonzero(gt.any((1, 2)))
    mid = int((ks[0] + ks[-1]) // 2)
    r = propagate(
        p, vol, mid, box=box_of(gt[mid]), task=task, settings=PropagateSettings(**settings)
    )
    row.update(middle_seed=mid, one_box_middle_slice=dice(r.masks, gt), stops_middle=r.stops)
    return row


def diagnose(p, name: str, settings: dict) -> list[dict]:
    """Per slice: ground truth and propagated pixels, their Dice, SAM's IoU estimate, and the
    Dice and estimate of SAM with the ground-truth box on that slice (plain SAM)."""
    from casam.propagate import PropagateSettings, propagate

    vol, gt = axial_volume(name)
    k = int(np.argmax(gt.sum((1, 2))))
    r = propagate(p, vol, k, box=box_of(gt[k]), task="sam", settings=PropagateSettings(**settings))
    score = {x.index: x.score for x in r.slices}
    rows = []
    for j in range(len(vol)):
        row = {"slice": j, "gt_px": int(gt[j].sum()), "px": int(r.masks[j].sum())}
        row.update(dice=dice(r.masks[j], gt[j]), score=score.get(j, float("nan")))
        if gt[j].any():
            b = p.predict_embedding(p.embed(vol[j]), box_of(gt[j]), "sam")
            row.update(gt_box_dice=dice(b.masks[0], gt[j]), gt_box_score=float(b.scores[0]))
        rows.append(row)
    return rows


def no_stop_run(p, vol, gt, carry: dict) -> dict:
    """Propagation with every stop rule off but ``empty`` (masks, SAM scores, seed)."""
    from casam.propagate import PropagateSettings, propagate

    k = int(np.argmax(gt.sum((1, 2))))
    kw = {**BEFORE, **carry, **_OFF, "min_pixels": 1}
    r = propagate(p, vol, k, box=box_of(gt[k]), task="sam", settings=PropagateSettings(**kw))
    return {"masks": r.masks, "scores": {x.index: x.score for x in r.slices}, "seed": k}


def apply_stops(vol, gt, run: dict, rules: dict) -> tuple[float, dict]:
    """3-D Dice of ``run`` cut where the stop ``rules`` (PropagateSettings fields) end it."""
    from casam.propagate import PropagateSettings, appearance, overlap, stop_reason

    s = PropagateSettings(**{**BEFORE, **rules})
    m, k, scores = run["masks"], run["seed"], run["scores"]
    mean, sd = appearance(vol[k], m[k])
    kept, stops = np.zeros_like(m), {}
    kept[k] = m[k]
    for d, name in ((1, "up"), (-1, "down")):
        j, why = k + d, None
        while j in scores and not why:
            shift = abs(appearance(vol[j], m[j])[0] - mean) / max(sd, 1e-6)
            why = stop_reason(
                int(m[j].sum()), scores[j], int(m[j - d].sum()), s, scores[k],
                overlap(m[j], m[j - d]), shift,
            )  # fmt: skip
            kept[j] = m[j] if not why else kept[j]
            j += d
        stops[name] = f"{why} at {j - d}" if why else "end of volume"
    return dice(kept, gt), stops


def tune(p) -> dict:
    """Every (carry, stop rule) pair on every validation volume: mean 3-D Dice."""
    data = {n: axial_volume(n) for n in VALIDATION}
    out = {}
    for carry, ckw in CARRY.items():
        runs = {n: no_stop_run(p, *data[n], ckw) for n in VALIDATION}
        for rule, rkw in STOP_RULES.items():
            cut = {n: apply_stops(*data[n], runs[n], rkw) for n in VALIDATION}
            row = {n: d for n, (d, _) in cut.items()}
            row["mean"] = float(np.mean(list(row.values())))
            row["stops"] = {n: st for n, (_, st) in cut.items()}
            out[f"{carry} | {rule}"] = row
            print(f"  {row['mean']:.3f}  {carry} | {rule}", flush=True)
    return out


def clicks_to_quality(
    p, pairs, task, n_max: int = 20, most: int = 6, mode: str = "local", settings=None
) -> dict:
    """The click protocol on ``most`` (image, mask) pairs: IoU after 0/1/3/5 clicks, NoC@85/90
    (capped at ``n_max``), beside NoC of clicks that change nothing (``noc90_no_change``:
    the bar a click rule must beat), and decoder calls per click."""
    from _common import evenly

    from casam.clicks import ClickSession, next_click
    from casam.metrics import iou

    curves, noc, decodes = [], {85: [], 90: []}, []
    for img, m in evenly(pairs, most):
        gt = np.asarray(m) > 0
        s = ClickSession(p, img, box_of(gt), task=task, mode=mode, settings=settings)
        ious = [iou(s.mask, gt)]
        while len(ious) <= n_max and ious[-1] < 0.90:
            c = next_click(s.mask, gt)
            if c is None:
                break
            s.add(c.x, c.y, c.positive)
            decodes.append(s.decodes)
            ious.append(iou(s.mask, gt))
        ious += [ious[-1]] * (n_max + 1 - len(ious))
        curves.append(ious)
        for t in noc:
            hit = [i for i, v in enumerate(ious) if v >= t / 100]
            noc[t].append(hit[0] if hit else n_max)
    c = np.array(curves)
    out = {f"iou_after_{n}": float(c[:, n].mean()) for n in (0, 1, 3, 5)}
    out.update({f"noc{t}": float(np.mean(v)) for t, v in noc.items()})
    out["noc90_no_change"] = float(np.mean([0 if v >= 0.9 else n_max for v in c[:, 0]]))
    out["decodes_per_click"] = float(np.mean(decodes)) if decodes else 0.0
    out["images"], out["mode"] = len(curves), mode
    return out


#: Click rules tried on the validation organs (ClickSettings fields; "mode": "points" is SAM's
#: own point prompts). The first is the product's default.
_DISC = {"fill": "disc", "negative": "inside"}
CLICK_RULES = {
    "SAM boxes x1.5, x3 from 4 px (off-object negatives), logits fill 1.25 below (default)": {},
    "SAM point prompts": {"mode": "points"},
    "SAM boxes x1.5, x3 (on-object negatives) from 3 px, disc below": {**_DISC, "sam_from": 3.0},
    "SAM boxes x1.5, x3 from 0 px": {**_DISC, "sam_from": 0.0},
    "SAM boxes x2, x4 from 3 px": {**_DISC, "sam_from": 3.0, "sizes": (2.0, 4.0)},
    "SAM boxes x1, x2, x3 from 3 px": {**_DISC, "sam_from": 3.0, "sizes": (1.0, 2.0, 3.0)},
    "SAM from 4 px (on-object negatives), disc below": {**_DISC, "sam_from": 4.0},
    "disc": {**_DISC, "sam_from": float("inf")},
    "disc x1.5": {**_DISC, "sam_from": float("inf"), "disc": 1.5},
    "logits fill, reach 1": {"sam_from": float("inf"), "reach": 1.0},
    "logits fill, reach 1.25": {"sam_from": float("inf")},
    "logits fill, reach 1.5": {"sam_from": float("inf"), "reach": 1.5},
    "logits fill, reach 2": {"sam_from": float("inf"), "reach": 2.0},
    "logits fill, reach 3": {"sam_from": float("inf"), "reach": 3.0},
    "SAM from 4 px (off-object negatives), logits fill 1.5 below": {"reach": 1.5},
    "SAM from 4 px (off-object negatives), logits fill 2 below": {"reach": 2.0},
    "SAM from 8 px (off-object negatives), logits fill 1.5 below": {"sam_from": 8.0, "reach": 1.5},
    "SAM from 4 px, positives only; logits fill 1.25": {"negative": "disc"},
    "SAM from 4 px, negatives only; logits fill 1.25": {"sam_positive": False},
}
CLICK_TUNE_MAX = 10  # the tuning's click cap (the test protocol's is 20)


def click_tune(p, rules=None) -> dict:
    """Every click rule on 6 slices of each validation organ, plain SAM (cap CLICK_TUNE_MAX)."""
    from casam.correct import ClickSettings

    data = {}
    for n in VALIDATION:
        vol, gt = axial_volume(n)
        data[n] = [(vol[k], gt[k]) for k in range(len(gt)) if gt[k].any()]
    out = {}
    for rule in rules or CLICK_RULES:
        kw = dict(CLICK_RULES[rule])
        mode = kw.pop("mode", "local")
        row = {
            n: clicks_to_quality(
                p, pairs, "sam", CLICK_TUNE_MAX, mode=mode, settings=ClickSettings(**kw)
            )
            for n, pairs in data.items()
        }
        row["mean"] = {k: float(np.mean([row[n][k] for n in data])) for k in row[VALIDATION[0]]
                       if k not in ("mode", "images")}  # fmt: skip
        out[rule] = row
        print(f"  {rule}: {json.dumps({k: round(v, 3) for k, v in row['mean'].items()})}",
              flush=True)  # fmt: skip
    return out


def learn(p, task, point_share: float) -> str:
    from casam import LearnSettings, learn_task

    name = task.name
    if name not in p.task_names:
        t0 = time.perf_counter()
        learn_task(
            [a for a, _ in task.train],
            [b for _, b in task.train],
            name,
            predictor=p,
            settings=LearnSettings(point_share=point_share),
            overwrite=True,
        )
        print(f"  learned {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return name


def click_times(p, image, gt, settings, mode: str, n: int = 7) -> tuple[float, list[int]]:
    """Median ms of a click on a cached slice (the simulated user's clicks after the first),
    and the decoder calls of each click."""
    from casam.clicks import ClickSession, next_click

    s = ClickSession(p, image, box_of(gt), task="sam", mode=mode, settings=settings)
    ts, dec = [], []
    for _ in range(n):
        c = next_click(s.mask, gt)
        if c is None:
            break
        t = time.perf_counter()
        s.add(c.x, c.y, c.positive)
        ts.append(time.perf_counter() - t)
        dec.append(s.decodes)
    return float(np.median(ts[1:]) * 1000), dec


def timings(p, name: str) -> dict:
    from casam.correct import ClickSettings
    from casam.predictor import Predictor
    from casam.propagate import propagate

    vol, gt = axial_volume(name)
    k = int(np.argmax(gt.sum((1, 2))))
    fresh = Predictor(backbone=p.backbone, library=False)  # memory cache only, empty
    out = {}
    for label in ("uncached", "cached"):
        t = time.perf_counter()
        r = propagate(fresh, vol, k, box=box_of(gt[k]), task="sam")
        out[f"propagate_s_per_slice_{label}"] = (time.perf_counter() - t) / len(r.slices)
    rules = {"": None, "_sam_boxes": ClickSettings(sam_from=0.0), "_points": None}
    for suffix, rule in rules.items():
        mode = "points" if suffix == "_points" else "local"
        ms, dec = click_times(fresh, vol[k], gt[k], rule, mode)
        out[f"click_ms_cached{suffix}"], out[f"click_decodes{suffix}"] = ms, dec
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    out["machine"] = machine()
    return out


def learned_sections(p, p_box, res: dict, save, settings: dict, sections) -> None:
    """Sections 4-6: tasks learned with and without click prompts, their 3-D and clicks."""
    import datasets

    tasks = {t.name: t for t in datasets.load_tasks()}
    if "learned" in sections or "box_check" in sections:
        box_only_check(p, p_box, tasks, res, save)
    if "learned" in sections or "learned_3d" in sections:
        for name in LEARN_TASKS:
            learn(p, tasks[name], 0.3)
        learned_three_d(p, res, save, settings)
    if "clicks" in sections:
        clicks_section(p, p_box, tasks, res, save)


def box_only_check(p, p_box, tasks, res: dict, save) -> None:
    """Box IoU of the tasks learned with click prompts (p) and from boxes only (p_box)."""
    print("4. tasks (default schedule), with and without click prompts", flush=True)
    res["box_only_check"] = {}
    for name in LEARN_TASKS:
        learn(p, tasks[name], 0.3)
    for name in BOX_ONLY_TASKS:
        learn(p_box, tasks[name], 0.0)
        res["box_only_check"][name] = {
            "box_iou_trained_with_points": heldout_iou(p, tasks[name].test, name)[0],
            "box_iou_trained_box_only": heldout_iou(p_box, tasks[name].test, name)[0],
            "box_iou_plain_sam": heldout_iou(p, tasks[name].test, None)[0],
        }
        print(f"  {name}: {res['box_only_check'][name]}", flush=True)
    save()


def learned_three_d(p, res: dict, save, settings: dict) -> None:
    print("5. 3-D from one box, learned tasks", flush=True)
    for name, (_, _, _, task) in VOLUMES.items():
        if task is not None:
            row = res.setdefault("three_d", {}).setdefault(name, {"role": VOLUMES[name][2]})
            row["learned task (routed)"] = three_d(p, name, "auto", settings)
            print(f"  {name}: {json.dumps(row['learned task (routed)'])}", flush=True)
            save()


#: The learned task the click rule is checked on in validation (a validation organ's task,
#: learned from boxes only); the test tasks are CLICK_TASKS.
CLICK_VALIDATION_TASK = "CT spleen"
#: The click rules also run on the learned validation task (the best few of CLICK_RULES).
LEARNED_RULES = (
    "SAM boxes x1.5, x3 from 4 px (off-object negatives), logits fill 1.25 below (default)",
    "SAM point prompts",
    "disc",
    "logits fill, reach 1.25",
)


def clicks_section(p, p_box, tasks, res: dict, save) -> None:
    """Clicks to quality: plain SAM and the learned tasks, the product's rule and SAM's point
    prompts; learned tasks from boxes only (p_box) and with point prompts (p)."""
    print("6. clicks to quality (CT spleen: validation; the rest test splits)", flush=True)
    res["clicks"] = {}
    for name in (CLICK_VALIDATION_TASK, *CLICK_TASKS):
        pairs = tasks[name].test
        learn(p_box, tasks[name], 0.0)
        row = {
            "plain SAM": clicks_to_quality(p, pairs, "sam"),
            "plain SAM, SAM point prompts": clicks_to_quality(p, pairs, "sam", mode="points"),
            "learned task (boxes only)": clicks_to_quality(p_box, pairs, name),
            "learned task (boxes only), SAM point prompts": clicks_to_quality(
                p_box, pairs, name, mode="points"
            ),
        }
        if name in p.task_names:  # learned with point prompts (section "learned")
            row["learned task (with points), SAM point prompts"] = clicks_to_quality(
                p, pairs, name, mode="points"
            )
            row["learned task (with points)"] = clicks_to_quality(p, pairs, name)
        res["clicks"][name] = row
        print(f"  {name}: {json.dumps(row)}", flush=True)
        save()


def click_tune_learned(p_box, tasks: dict) -> dict:
    """LEARNED_RULES on the validation organ's learned task (its test split, cap 10)."""
    from casam.correct import ClickSettings

    name = CLICK_VALIDATION_TASK
    learn(p_box, tasks[name], 0.0)
    out = {}
    for rule in LEARNED_RULES:
        kw = dict(CLICK_RULES[rule])
        mode = kw.pop("mode", "local")
        out[rule] = clicks_to_quality(
            p_box, tasks[name].test, name, CLICK_TUNE_MAX, mode=mode, settings=ClickSettings(**kw)
        )
        print(f"  {name} (learned), {rule}: {json.dumps(out[rule])}", flush=True)
    return out


def merge(dst: dict, src: dict) -> dict:
    """``src`` into ``dst``, nested dicts key by key (sections run apart share the file)."""
    for k, v in src.items():
        dst[k] = merge(dst[k], v) if isinstance(v, dict) and isinstance(dst.get(k), dict) else v
    return dst


SECTIONS = (
    "diagnose",
    "tune",
    "plain",
    "times",
    "learned",
    "learned_3d",
    "box_check",
    "click_tune",
    "clicks",
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "interactive.json"))
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    ap.add_argument("--times-only", action="store_true", help="only the times (= --only times)")
    ap.add_argument(
        "--reuse",
        metavar="JSON",
        help="{volume: {'plain SAM': {figure: value}}}: settings-independent plain-SAM figures "
        "(gt_box_every_slice, interpolated_boxes, one_box_slice_before) of an earlier run",
    )
    ap.add_argument("--rules", nargs="+", choices=list(CLICK_RULES), help="click rules to tune")
    ap.add_argument("--volumes", nargs="+", choices=list(VOLUMES), help="volumes of section 2")
    args = ap.parse_args(argv)
    sections = ["times"] if args.times_only else (args.only or list(SECTIONS))

    from casam.predictor import Predictor

    out = Path(args.out)
    keep = bool(args.only or args.times_only)  # other sections' results stay in the file
    res = {"machine": machine()}

    def save() -> None:  # after every section: a slow machine still leaves what was measured
        res["load_avg_1m_now"] = round(os.getloadavg()[0], 2)
        cur = json.loads(out.read_text()) if keep and out.exists() else {}
        out.write_text(json.dumps(merge(cur, res), indent=1, default=str))

    p = Predictor(library=LIB, disk_cache=EMB_CACHE)
    settings = {}  # PropagateSettings' defaults, chosen by the tuning section
    if "diagnose" in sections:
        print("0. per-slice diagnosis, validation volumes, settings before", flush=True)
        res["diagnosis"] = {n: diagnose(p, n, BEFORE) for n in VALIDATION}
        save()
    if "tune" in sections:
        print("1. propagation settings, on the validation volumes", flush=True)
        res["tuning"] = tune(p)
        res["best_on_validation"] = max(res["tuning"], key=lambda c: res["tuning"][c]["mean"])
        save()
    if "click_tune" in sections:
        print("1b. click rules, on the validation organs (plain SAM)", flush=True)
        res["click_tuning"] = click_tune(p, args.rules)
        save()
        if not args.rules:
            import datasets

            tasks = {t.name: t for t in datasets.load_tasks()}
            p_box = Predictor(backbone=p.backbone, library=LIB_BOX_ONLY, disk_cache=EMB_CACHE)
            res["click_tuning_learned"] = click_tune_learned(p_box, tasks)
            save()
    if "plain" in sections:
        reuse = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
        plain_section(p, res, save, settings, reuse, args.volumes or list(VOLUMES))
    if "times" in sections:
        print("3. times", flush=True)
        res["times"] = timings(p, "MR liver")
        print(f"  {res['times']}", flush=True)
        save()
    if {"learned", "learned_3d", "box_check", "clicks"} & set(sections):
        p_box = Predictor(backbone=p.backbone, library=LIB_BOX_ONLY, disk_cache=EMB_CACHE)
        learned_sections(p, p_box, res, save, settings, sections)
    res["finished"] = {n: res["machine"]["date"] for n in sections}
    save()
    print(f"wrote {out}")
    return 0


def plain_section(p, res: dict, save, settings: dict, reuse: dict, volumes) -> None:
    print("2. 3-D from one box, plain SAM (test volumes first)", flush=True)
    res["three_d"] = res.get("three_d", {})
    for name in sorted(volumes, key=lambda n: VOLUMES[n][2] != "test"):
        row = res["three_d"].get(name, {})
        row.update(role=VOLUMES[name][2])
        known = reuse.get(name, {}).get("plain SAM", {})
        row["plain SAM"] = three_d(p, name, "sam", settings, before=True, known=known)
        res["three_d"][name] = row
        print(f"  {name}: {json.dumps(row['plain SAM'])}", flush=True)
        save()


if __name__ == "__main__":
    raise SystemExit(main())
