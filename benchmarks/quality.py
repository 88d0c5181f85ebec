"""Continual-learning quality benchmark on real tasks (the paper's protocol, method.md).

    python benchmarks/quality.py                       # writes docs/benchmark-quality.md
    python benchmarks/quality.py --embed-only          # only fill the embedding cache

Methods, all on the same frozen backbone (LiteMedSAM) and the same splits:

- plain SAM (zero-shot), ground-truth box per test image;
- naive: ONE Alignment Layer fine-tuned sequentially on task 1, 2, ... (always applied);
- CA-SAM: one layer + VAE router per task (``casam.training.learn_task``), routed by
  ``casam.Predictor`` among the tasks learned so far, SAM fallback when no VAE accepts;
- CA-SAM oracle: the task's own layer, no routing;
- joint: one layer trained on the union of all tasks' training slices (upper bound).

Every layer uses the same schedule (``--schedule``: the library's defaults or the paper's).
Per-task CA-SAM models do not depend on the order (learning task t touches nothing of the
others), so each task is learned once and each order only changes which tasks the router knows
at each step. Naive fine-tuning depends on the order and is retrained per order.

Metrics (method.md): R[k][j] = mean IoU on task k's test set after training j tasks;
IoU_t = test-size-weighted mean of R[k][t] over k <= t; Last = IoU_N; Avg = mean_t IoU_t;
FF = mean over k < N of max_{k <= j < N} (R[k][j] - R[k][N]). Same for Boundary IoU.
Routing accuracy: share of known-task test images routed to their own task (all N learned);
OOD accuracy: share of ``datasets.load_ood()`` images routed to plain SAM.

Trained models are kept in ``--work`` (and embeddings in the benchmarks' disk cache), so a
re-run with the same settings only evaluates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    EMB_CACHE,
    HERE,
    Samples,
    box_of,
    evenly,
    layer_scores,
    load_layer,
    load_ood,
    load_tasks,
    machine,
    peak_rss_mb,
    train_layer,
)
from datasets import DOMAIN_TASKS  # noqa: E402

PAPER = {  # method.md: SAM ViT-B, 9 medical datasets, RTX A5000
    "plain SAM": {"Last-IoU": 53.81, "Last-BIoU": 36.52},
    "naive": {"Last-IoU": 14.38, "Avg-IoU": 37.93, "FF-IoU": 65.79, "Last-BIoU": 13.50},
    "CA-SAM": {"Last-IoU": 76.12, "Avg-IoU": 76.90, "FF-IoU": 1.43, "Last-BIoU": 59.95},
    "joint": {"Last-IoU": 78.43, "Last-BIoU": 61.26},
}
METHODS = ["plain SAM", "naive", "CA-SAM", "CA-SAM oracle", "joint"]


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def cl_metrics(R: dict, sizes: list[int], last_only: bool = False) -> dict:
    """R[(k, j)] = mean score of task k after training j tasks (0-based, k <= j)."""
    n = len(sizes)

    def stage(t):
        w = np.array(sizes[: t + 1], float)
        return float(np.sum(w * np.array([R[(k, t)] for k in range(t + 1)])) / w.sum())

    out = {"Last": stage(n - 1) * 100}
    if not last_only:
        out["Avg"] = float(np.mean([stage(t) for t in range(n)])) * 100
        ff = [max(R[(k, j)] - R[(k, n - 1)] for j in range(k, n - 1)) for k in range(n - 1)]
        out["FF"] = float(np.mean(ff)) * 100 if ff else 0.0
    return out


# ---------------------------------------------------------------------------------------------


def settings_for(schedule: str, overrides=()):
    from casam import LearnSettings

    base = (LearnSettings.paper() if schedule == "paper" else LearnSettings()).to_dict()
    # the task's fixed test set is the held-out set: train on all of its training slices
    base["holdout"] = 0.0
    for kv in overrides:
        k, v = kv.split("=", 1)
        base[k] = (
            None
            if v == "None"
            else type(base[k] if base[k] is not None else True)(
                v if not isinstance(base[k], bool) else v.lower() in ("1", "true", "yes")
            )
        )
    return LearnSettings.from_dict(base)


def signature(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: The engine modules whose code decides what a trained model is. Their source is part of the
#: work folder's signature, so models trained by an older engine are never reused.
ENGINE_MODULES = (
    "alignment",
    "backbones",
    "config",
    "embeddings",
    "metrics",
    "neighbours",
    "predictor",
    "preprocess",
    "router",
    "routing",
    "task_router",
    "task_tensors",
    "training",
)


def engine_fingerprint() -> str:
    import casam

    root = Path(casam.__file__).parent
    h = hashlib.sha256()
    for mod in ENGINE_MODULES:
        h.update((root / f"{mod}.py").read_bytes())
    return h.hexdigest()[:16]


def save_layer(layer, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in layer.state_dict().items()}, str(tmp))
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tasks",
        default=",".join(DOMAIN_TASKS),
        help="comma-separated task names of datasets.load_tasks()",
    )
    ap.add_argument(
        "--orders",
        default="forward,reverse",
        help="comma-separated: forward, reverse, or a permutation like 3-1-0-2-5-4",
    )
    ap.add_argument(
        "--max-train",
        type=int,
        default=16,
        help="training slices per task (evenly spread; CPU budget)",
    )
    ap.add_argument("--schedule", choices=("default", "paper"), default="default")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one LearnSettings value (e.g. --set epochs=4); repeatable",
    )
    ap.add_argument("--data-cache", default=None)
    ap.add_argument(
        "--work", default="~/.cache/napari-casam/bench-quality", help="trained models kept here"
    )
    ap.add_argument("--embed-only", action="store_true")
    ap.add_argument(
        "--train-only",
        default=None,
        metavar="PARTS",
        help="only train (into --work) the comma-separated parts casam, joint, naive-ORDER, then "
        "exit: lets separate processes share the training; a later full run only evaluates",
    )
    ap.add_argument(
        "--note", action="append", default=[], help="a note for the markdown (repeatable)"
    )
    ap.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="only re-write the markdown from an earlier run's JSON (plus --note)",
    )
    ap.add_argument(
        "--baselines-from",
        metavar="JSON",
        default=None,
        help="take naive and joint (whose training code CA-SAM's changes do not touch) from an "
        "earlier run's JSON instead of training them: per order of the same name, refused unless "
        "plain SAM's figures agree; an order that run lacks gets no naive row",
    )
    ap.add_argument("--md", default=str(HERE.parent / "docs" / "benchmark-quality.md"))
    ap.add_argument("--json", default=str(HERE / "results" / "quality.json"))
    args = ap.parse_args(argv)
    if args.render:
        run = json.loads(Path(args.render).read_text())
        run["notes"] = run.get("notes", []) + args.note
        Path(args.render).write_text(json.dumps(run, indent=1, default=str))
        write_md(Path(args.md), render(run))
        return 0
    t_start = time.perf_counter()

    from casam import Predictor, TaskLibrary
    from casam.metrics import boundary_iou, iou

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    all_tasks = {t.name: t for t in load_tasks(args.data_cache)}
    missing = [n for n in names if n not in all_tasks]
    if missing:
        ap.error(f"unknown tasks {missing}; known: {list(all_tasks)}")
    tasks = [all_tasks[n] for n in names]
    train = {t.name: evenly(t.train, args.max_train) for t in tasks}
    # held out from training (the task's other training slices, as routing_data's val): the
    # learner measures its held-out IoU and chooses the layer's strength on them
    held = {
        t.name: evenly([pr for pr in t.train if not any(pr is q for q in train[t.name])], 8)
        for t in tasks
    }
    old = json.loads(Path(args.baselines_from).read_text()) if args.baselines_from else None
    test = {t.name: list(t.test) for t in tasks}
    ood = load_ood(args.data_cache)
    sizes = {n: len(test[n]) for n in names}

    s = settings_for(args.schedule, args.set)
    work = Path(args.work).expanduser() / (
        f"{args.schedule}-{signature([s.to_dict(), args.max_train, names, engine_fingerprint()])}"
    )
    lib_all = TaskLibrary(work / "lib-all")
    p = Predictor(library=lib_all, disk_cache=EMB_CACHE)
    bb = p.backbone
    run = {
        "machine": machine(),
        "backbone": bb.identity,
        "settings": s.to_dict(),
        "schedule": args.schedule,
        "notes": list(args.note),
        "engine": engine_fingerprint(),
        "max_train": args.max_train,
        "baselines_from": args.baselines_from,
        "tasks": [],
        "seconds": {},
    }

    if args.train_only:
        return train_only(args, p, names, train, s, work, held)
    log("embeddings ...")
    t0 = time.perf_counter()
    pairs = [pr for n in names for pr in train[n] + test[n]]
    for i, (img, _) in enumerate(pairs):
        p.embed(img)
        if i % 25 == 0:
            log(f"  {i}/{len(pairs)}")
    for _, img in ood:
        p.embed(img)
    run["seconds"]["embeddings"] = round(time.perf_counter() - t0, 1)
    if args.embed_only:
        return 0
    for t in tasks:
        run["tasks"].append(
            {
                "name": t.name,
                "modality": t.modality,
                "train_used": len(train[t.name]),
                "held_out": len(held[t.name]),
                "train_available": len(t.train),
                "test": len(t.test),
                "source": t.source,
                "split": t.split,
            }
        )

    # ---- plain SAM -----------------------------------------------------------------------------
    log("plain SAM ...")
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (task, model) -> per image
    for n in names:
        scores[(n, "sam")] = layer_scores(p, None, test[n])

    # ---- CA-SAM: each task learned once with casam's own training ------------------------------
    t0 = time.perf_counter()
    learn_seconds = learn_missing(p, names, train, s, held)
    p.reload_library()
    run["strength"] = {n: p.task_infos[n].settings.get("strength") for n in names}
    run["strength_iou"] = {n: p.task_infos[n].settings.get("strength_iou") for n in names}
    run["adapter"] = {n: p.task_infos[n].adapter for n in names}
    run["kind_iou"] = {n: p.task_infos[n].settings.get("kind_iou") for n in names}
    run["seconds"]["ca_sam_learn"] = round(time.perf_counter() - t0, 1)
    run["ca_sam_learn_seconds"] = learn_seconds
    run["thresholds"] = {n: p.task_infos[n].threshold for n in names}
    run["router"] = p.router  # the shipped default (casam.routing.DEFAULT_ROUTER)
    knn = p.neighbours
    run["knn_thresholds"] = dict(zip(knn.names, knn.thresholds.tolist(), strict=True))

    memo: dict[tuple[str, int, str | None], tuple[float, float]] = {}

    def score_with(task_name: str, k: int, model: str | None) -> tuple[float, float]:
        key = (task_name, k, model)
        if key not in memo:
            img, m = test[task_name][k]
            e = p.embed(img)
            pred = p.predict_embedding(e, box_of(m), model if model is not None else "sam")
            gt = np.asarray(m) > 0
            memo[key] = (iou(pred.masks[0], gt), boundary_iou(pred.masks[0], gt))
        return memo[key]

    log("CA-SAM oracle ...")
    for n in names:
        scores[(n, "oracle")] = [score_with(n, k, n) for k in range(len(test[n]))]

    # ---- routing with the full library -----------------------------------------------------------
    routed_all = {n: [p.route_embedding(p.embed(img)).task for img, _ in test[n]] for n in names}
    run["routing"] = {
        n: {
            "correct": sum(r == n for r in routed_all[n]),
            "fallback": sum(r is None for r in routed_all[n]),
            "other": {
                o: sum(r == o for r in routed_all[n])
                for o in names
                if o != n and any(r == o for r in routed_all[n])
            },
            "n": len(test[n]),
        }
        for n in names
    }
    tot = sum(sizes.values())
    run["routing_accuracy"] = sum(v["correct"] for v in run["routing"].values()) / tot
    run["known_fallback_share"] = sum(v["fallback"] for v in run["routing"].values()) / tot
    ood_routes = [(kind, p.route_embedding(p.embed(img))) for kind, img in ood]
    run["ood"] = [
        {
            "kind": kind,
            "task": r.task,
            "best": r.best,
            "score": r.score,
            "threshold": r.threshold,
            "ratio": r.ratio,
        }
        for kind, r in ood_routes
    ]
    run["ood_accuracy"] = float(np.mean([r.task is None for _, r in ood_routes]))

    # ---- router strictness: the threshold percentile swept after the fact ------------------------
    # The per-image 5-fold scores are recomputed with casam's own fit_router on the same training
    # features and seeds (the 97th-percentile value reproduces the stored threshold), then each
    # rule re-thresholds the same final VAEs: nothing is retrained.
    from casam.router import fit_router

    log("router strictness sweep ...")
    vae_kw = dict(
        steps=s.vae_steps, batch=s.vae_batch, lr=s.vae_lr, hidden=s.vae_hidden, latent=s.vae_latent
    )
    cv = {}
    for n in names:
        feats = torch.stack([p.embed(img).feature for img, _ in train[n]]).float()
        _, thr, cv[n] = fit_router(
            feats, folds=s.folds, percentile=s.percentile, seed=s.seed, beta=s.beta, **vae_kw
        )
        thr *= s.threshold_margin
        run.setdefault("threshold_reproduced", {})[n] = abs(
            thr - run["thresholds"][n]
        ) <= 1e-5 * abs(run["thresholds"][n])

    def vae_scores(img) -> dict[str, float]:  # the paper rule's scores, whatever routes
        row = p.bank.scores(p.embed(img).feature[None])[0].tolist()
        return dict(zip(p.bank.names, row, strict=True))

    known = [(n, k, vae_scores(img)) for n in names for k, (img, _) in enumerate(test[n])]
    ood_scores = [vae_scores(img) for _, img in ood]
    rules = [
        (f"{q:g}th percentile", {n: float(np.percentile(cv[n], q)) for n in names})
        for q in (90, 95, 97, 99, 100)
    ]
    rules += [
        (f"{f:g} x 97th percentile", {n: f * float(np.percentile(cv[n], 97)) for n in names})
        for f in (1.25, 1.5, 2, 3)
    ]

    def decide(sc, thr):
        best = min(sc, key=sc.get)
        return best if sc[best] <= thr[best] else None

    run["strictness"] = []
    for label, thr in rules:
        routes = [(n, k, decide(sc, thr)) for n, k, sc in known]
        vals = np.array([score_with(n, k, r) for n, k, r in routes])
        run["strictness"].append(
            {
                "rule": label,
                "routing_accuracy": float(np.mean([r == n for n, _, r in routes])),
                "fallback": float(np.mean([r is None for _, _, r in routes])),
                "wrong_task": float(np.mean([r is not None and r != n for n, _, r in routes])),
                "ood_accuracy": float(np.mean([decide(sc, thr) is None for sc in ood_scores])),
                "iou": float(vals[:, 0].mean()) * 100,
                "biou": float(vals[:, 1].mean()) * 100,
            }
        )

    # ---- joint training (order-independent) ------------------------------------------------------
    samples = {n: Samples.from_pairs(p, train[n], s) for n in names}
    if old is None:
        joint, joint_s = saved_layer(
            work / "joint.safetensors",
            s.blocks,
            "joint training",
            lambda: train_layer(bb, Samples.cat([samples[n] for n in names]), s),
        )
        if joint_s is not None:
            run["seconds"]["joint_train"] = joint_s
        for n in names:
            scores[(n, "joint")] = layer_scores(p, joint, test[n])
    methods = [m for m in METHODS if old is None or m not in ("naive", "joint")]

    # ---- orders ----------------------------------------------------------------------------------
    orders = [order_list(o.strip(), names) for o in args.orders.split(",") if o.strip()]

    def mean_pair(v):
        a = np.array(v)
        return float(a[:, 0].mean()), float(a[:, 1].mean())

    run["orders"] = []
    for oname, order in orders:
        log(f"order {oname}: {order}")
        N = len(order)
        R = {m: ({}, {}) for m in methods}  # method -> (R_iou, R_biou)

        def put(method, k, j, v, R=R):
            R[method][0][(k, j)], R[method][1][(k, j)] = mean_pair(v)

        # plain SAM, oracle, joint: constant over stages
        for j in range(N):
            for k in range(j + 1):
                put("plain SAM", k, j, scores[(order[k], "sam")])
                put("CA-SAM oracle", k, j, scores[(order[k], "oracle")])
                if old is None:
                    put("joint", k, j, scores[(order[k], "joint")])
        # CA-SAM: the router knows tasks order[:j+1] (a library holding exactly those)
        routed_share = []
        for j in range(N):
            lib_j = TaskLibrary(work / f"lib-{oname}-{j}")
            for n in order[: j + 1]:
                if n not in lib_j:
                    t = lib_all.load(n)
                    lib_j.save(t.info, t.alignment, t.router)
            p.library = lib_j
            p.reload_library()
            assert sorted(p.task_names) == sorted(order[: j + 1]), p.task_names
            for k in range(j + 1):
                n = order[k]
                routes = [p.route_embedding(p.embed(img)).task for img, _ in test[n]]
                put("CA-SAM", k, j, [score_with(n, i, r) for i, r in enumerate(routes)])
                if j == N - 1:
                    routed_share.append(sum(r == n for r in routes))
        p.library = lib_all
        p.reload_library()
        # naive sequential fine-tuning of one layer
        t0 = time.perf_counter()
        stages = naive_stages(bb, oname, order, samples.__getitem__, s, work) if old is None else []
        for j, layer in enumerate(stages):
            for k in range(j + 1):
                put("naive", k, j, layer_scores(p, layer, test[order[k]]))
        naive_s = round(time.perf_counter() - t0, 1) if old is None else None
        sz = [sizes[n] for n in order]
        table = {}
        for m in methods:
            last_only = m == "joint"
            mi = cl_metrics(R[m][0], sz, last_only)
            mb = cl_metrics(R[m][1], sz, last_only)
            table[m] = {
                **{f"{k}-IoU": v for k, v in mi.items()},
                **{f"{k}-BIoU": v for k, v in mb.items()},
            }
        per_task = {
            m: {order[k]: [R[m][0][(k, N - 1)] * 100, R[m][1][(k, N - 1)] * 100] for k in range(N)}
            for m in methods
        }
        matrix = {
            m: {f"{k},{j}": R[m][0][(k, j)] for (k, j) in R[m][0]}
            for m in ("naive", "CA-SAM")
            if m in methods
        }
        run["orders"].append(
            {
                "name": oname,
                "order": order,
                "table": table,
                "per_task_last": per_task,
                "R_iou": matrix,
                "naive_train_s": naive_s,
            }
        )
        if old is not None:
            take_baselines(run["orders"][-1], old)
        log(json.dumps(table))
    run["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    run["peak_rss_mb"] = peak_rss_mb()
    run["machine"]["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    Path(args.md).parent.mkdir(parents=True, exist_ok=True)
    write_md(Path(args.md), render(run))
    print(render(run))
    return 0


def write_md(md: Path, text: str) -> None:
    """Write the report, keeping the sections that ``routing.py``, ``routing_libsizes.py``,
    ``learning_curve.py``, ``baselines.py``, ``adapter_kind.py`` and ``train_augment.py``
    maintain in the same file (in that order)."""
    import _baselines_report
    import adapter_kind
    import learning_curve
    import routing
    import routing_libsizes
    import train_augment

    old = md.read_text() if md.is_file() else ""
    mods = (
        routing,
        routing_libsizes,
        learning_curve,
        _baselines_report,
        adapter_kind,
        train_augment,
    )
    for mod in mods:
        if mod.BEGIN in old and mod.END in old:
            text += "\n" + old[old.index(mod.BEGIN) : old.index(mod.END) + len(mod.END)] + "\n"
    md.write_text(text)


def take_baselines(o: dict, old: dict) -> None:
    """Naive and joint rows of order ``o`` from an earlier run's order of the same name (joint
    only when that run lacks the order), refused unless plain SAM's figures agree."""
    prev = {x["name"]: x for x in old["orders"]}
    src = prev.get(o["name"]) or next(iter(prev.values()))
    for k, v in o["table"]["plain SAM"].items():
        if k.startswith("Last") and abs(v - src["table"]["plain SAM"][k]) > 0.01:
            raise SystemExit(f"plain SAM's {k} differs from the earlier run: not comparable")
    keep = ("naive", "joint") if o["name"] in prev else ("joint",)
    for m in keep:
        o["table"][m] = src["table"][m]
        o["per_task_last"][m] = src["per_task_last"][m]
    if "naive" in keep:
        o["R_iou"]["naive"] = src["R_iou"]["naive"]
        o["naive_train_s"] = src.get("naive_train_s")
    order = list(METHODS)
    o["table"] = {m: o["table"][m] for m in order if m in o["table"]}
    o["per_task_last"] = {m: o["per_task_last"][m] for m in order if m in o["per_task_last"]}


def order_list(spec: str, names: list[str]) -> tuple[str, list[str]]:
    if spec == "forward":
        return "forward", list(names)
    if spec == "reverse":
        return "reverse", list(reversed(names))
    return spec, [names[int(i)] for i in spec.split("-")]


def learn_missing(p, names, train, s, held=None) -> dict[str, float]:
    """Learn, with casam's own ``learn_task``, each task the predictor's library lacks (``held``:
    its held-out slices, never trained on). Returns the seconds each one took."""
    from casam.training import learn_task

    seconds = {}
    for n in names:
        if n in p.library:
            continue
        log(f"CA-SAM: learning '{n}' ({len(train[n])} slices) ...")
        t0 = time.perf_counter()
        learn_task(
            [im for im, _ in train[n]],
            [m for _, m in train[n]],
            n,
            predictor=p,
            settings=s,
            overwrite=True,
            holdout=([im for im, _ in held[n]], [m for _, m in held[n]]) if held else None,
        )
        seconds[n] = round(time.perf_counter() - t0, 1)
    return seconds


def saved_layer(path: Path, blocks: int, what: str, train):
    """The Alignment Layer saved at ``path``; else ``train()``'s, saved there.
    Returns (layer, training seconds or None when it was loaded)."""
    if path.is_file():
        return load_layer(path, blocks), None
    log(f"{what} ...")
    t0 = time.perf_counter()
    layer = train()
    seconds = round(time.perf_counter() - t0, 1)
    save_layer(layer, path)
    return layer, seconds


def naive_stages(bb, oname: str, order: list[str], samples_of, s, work: Path):
    """Naive fine-tuning: ONE layer trained on order[0], then order[1], ...; yields it after
    each task (each stage saved in ``work``)."""
    layer = None
    for j, n in enumerate(order):
        layer, _ = saved_layer(
            work / f"naive-{oname}-{j}.safetensors",
            s.blocks,
            f"naive {oname}: training on '{n}'",
            lambda prev=layer, n=n: train_layer(bb, samples_of(n), s, layer=prev),
        )
        yield layer


def train_only(args, p, names, train, s, work, held=None) -> int:
    """Train the requested parts into ``work`` (same files and names as the full run uses)."""
    parts = [x.strip() for x in args.train_only.split(",") if x.strip()]
    bb = p.backbone
    for part in parts:
        if part == "casam":
            learn_missing(p, names, train, s, held)
        elif part == "joint":
            saved_layer(
                work / "joint.safetensors",
                s.blocks,
                "joint training",
                lambda: train_layer(
                    bb, Samples.cat([Samples.from_pairs(p, train[n], s) for n in names]), s
                ),
            )
        elif part.startswith("naive-"):
            oname, order = order_list(part[len("naive-") :], names)
            for _ in naive_stages(
                bb, oname, order, lambda n: Samples.from_pairs(p, train[n], s), s, work
            ):
                pass
        else:
            raise SystemExit(f"unknown part {part!r}: casam, joint or naive-ORDER")
    return 0


def fmt(v, pct=False) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}"


def render(run: dict) -> str:
    m = run["machine"]
    s = run["settings"]
    L = []
    L.append("# Quality benchmark: continual learning on real tasks\n")
    L.append(
        "Written by `python benchmarks/quality.py` (see its docstring for the protocol). "
        "Do not edit by hand: re-run the script.\n"
    )
    L.append(
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
        f"bf16 native: {m['bf16_native']}; load average {m['load_avg_1m_at_start']} at start, "
        f"{m.get('load_avg_1m_at_end')} at end (shared machine)."
    )
    L.append(f"- Date: {m['date']}; backbone: `{run['backbone']}` (LiteMedSAM, frozen).")
    L.append(
        f"- Schedule ({run['schedule']}): {s['blocks']} block(s), {s['epochs']} epochs, "
        f"{s.get('augment', 0)} augmented copies of each training slice, batch "
        f"{s['batch_size']}, "
        f"lr {s['lr']:g}, bf16 {s['bf16']}, box jitter {s['box_jitter']}, VAE {s['vae_steps']} "
        "steps, "
        f"beta {s['beta']}, threshold {s.get('threshold_margin', 1.0):g} x the "
        f"{s['percentile']:g}th percentile "
        f"of the {s['folds']}-fold held-out scores. "
        "The same schedule for every layer (CA-SAM, naive, joint) unless a note says otherwise."
    )
    L.append(
        f"- At most {run['max_train']} training slices per task (evenly spread over the task's "
        "training "
        "split) to fit a 2-core CPU; the whole test split is used. Prompts: the ground-truth "
        "mask's "
        "bounding box (one per image). One seed."
    )
    L.append(
        f"- Wall time: {run['seconds'].get('total')} s in total; peak RSS {run['peak_rss_mb']} "
        "MB.\n"
    )
    for note in run.get("notes", []):
        L.append(f"> {note}\n")
    L.append("## Tasks\n")
    L.append("| # | task | modality | train used / held out / available | test | split | source |")
    L.append("|---|---|---|---|---|---|---|")
    for i, t in enumerate(run["tasks"]):
        L.append(
            f"| {i} | {t['name']} | {t['modality']} | {t['train_used']} / "
            f"{t.get('held_out', 0)} / {t['train_available']} "
            f"| {t['test']} | {t['split']} | {t['source']} |"
        )
    if run.get("strength"):
        L.append(
            "\nLayer strength (`LearnSettings.choose_strength`): after training, each task's "
            "layer is tried on its held-out slices (the task's other training slices, at most "
            "8, never trained on; none where every training slice is used) at strengths 0 "
            "(plain SAM), 0.25, 0.5, 0.75 and 1 (as trained), and the best is kept. Held-out "
            'IoU by strength, and the one kept; with adapter "auto", where the Alignment '
            "Layer gained under `auto_gain` there, decoder adapters were trained too and the "
            "kind with the better held-out IoU kept (the strengths are the kept kind's):\n"
        )
        L.append("| task | held-out IoU at 0 / 0.25 / 0.5 / 0.75 / 1 | kept | adapter kept |")
        L.append("|---|---|---|---|")
        for n, a in run["strength"].items():
            ious = run.get("strength_iou", {}).get(n) or {}
            cells = " / ".join(
                f"{ious[k] * 100:.1f}" for k in ("0", "0.25", "0.5", "0.75", "1") if k in ious
            )
            kind = (run.get("adapter") or {}).get(n) or "alignment"
            tried = (run.get("kind_iou") or {}).get(n) or {}
            if tried:
                kind += (
                    " (held-out: " + ", ".join(f"{k} {v * 100:.1f}" for k, v in tried.items()) + ")"
                )
            L.append(f"| {n} | {cells or 'no held-out slices'} | {a:g} | {kind} |")
    L.append(
        "\nCT spleen and MR spleen (also in `datasets.load_tasks()`) are left out: their slices "
        "are the "
        "same images as CT liver and MR liver with another label, and CA-SAM's router sees only "
        "the "
        "image, so two tasks on the same images cannot be told apart by design.\n"
    )
    L.append(
        "IoU and Boundary IoU in points (x100); FF (forgetting) in points too. "
        "Joint training has no sequence, so only its Last values are defined.\n"
    )
    for o in run["orders"]:
        L.append(f"## Order {o['name']}: " + " -> ".join(o["order"]) + "\n")
        L.append("| method | Last-IoU | Avg-IoU | FF-IoU | Last-BIoU | Avg-BIoU | FF-BIoU |")
        L.append("|---|---|---|---|---|---|---|")
        for meth, row in o["table"].items():
            cells = [
                fmt(row.get(k))
                for k in ("Last-IoU", "Avg-IoU", "FF-IoU", "Last-BIoU", "Avg-BIoU", "FF-BIoU")
            ]
            L.append(f"| {meth} | " + " | ".join(cells) + " |")
        L.append("")
        L.append("Final IoU per task (after all tasks):\n")
        L.append("| task | " + " | ".join(o["per_task_last"]) + " |")
        L.append("|---|" + "---|" * len(o["per_task_last"]))
        for n in o["order"]:
            L.append(
                f"| {n} | "
                + " | ".join(f"{o['per_task_last'][meth][n][0]:.1f}" for meth in o["per_task_last"])
                + " |"
            )
        L.append("")
    L.append("## Routing (all tasks learned)\n")
    router = run.get("router", "paper")
    L.append(
        f"Router: **{router}** (the default; "
        + (
            "kNN: distance of the pooled views to the task's nearest stored training image, "
            "threshold a margin x the largest leave-one-out distance, raised to the task's floor "
            "(beyond the own threshold only with a clear runner-up); "
            if router == "knn"
            else "the paper's VAE rule; "
        )
        + "see Router designs below).  "
    )
    L.append(
        f"Routing accuracy on known tasks: **{run['routing_accuracy'] * 100:.1f}%** of test images "
        f"routed to their own task ({run['known_fallback_share'] * 100:.1f}% fell back to SAM).  "
    )
    L.append(
        f"OOD accuracy: **{run['ood_accuracy'] * 100:.1f}%** of {len(run['ood'])} images of "
        "unseen kinds "
        "routed to plain SAM.\n"
    )
    L.append("| task | test images | own task | SAM fallback | other tasks | threshold |")
    L.append("|---|---|---|---|---|---|")
    for n, r in run["routing"].items():
        other = ", ".join(f"{k}: {v}" for k, v in r["other"].items()) or "–"
        L.append(
            f"| {n} | {r['n']} | {r['correct']} | {r['fallback']} | {other} | "
            f"{run.get('knn_thresholds', run['thresholds'])[n]:.3g} |"
            if router == "knn"
            else f"{run['thresholds'][n]:.3g} |"
        )
    L.append("\n| OOD image kind | routed to | best task (score / its threshold) |")
    L.append("|---|---|---|")
    for r in run["ood"]:
        L.append(
            f"| {r['kind']} | {r['task'] or 'SAM'} | {r['best']} ({r['score']:.3g} / "
            f"{r['threshold']:.3g} = {r['score'] / r['threshold']:.2f}) |"
        )
    if run.get("strictness"):
        L.append("\n## Router strictness\n")
        L.append(
            'The paper\'s VAE rule (router "paper", not the default): a task accepts an image '
            "when its VAE score is at most a threshold made from its "
            f"{s['folds']}-fold "
            f"held-out scores. The paper's rule is their {s['percentile']:g}th percentile; the "
            "VAE threshold stored "
            f"is {s.get('threshold_margin', 1.0):g} x that percentile. Below, "
            "the same "
            "final VAEs re-thresholded by other rules, all tasks learned, on every known test "
            "image "
            "(IoU and BIoU: mean over all test images, with the routed task's layer or plain SAM) "
            "and the "
            "OOD images. Per-task thresholds reproduced from the recomputed fold scores: "
            f"{sum(run['threshold_reproduced'].values())} of {len(run['threshold_reproduced'])}.\n"
        )
        L.append(
            "| rule | routed to own task | SAM fallback | wrong task | OOD to SAM | IoU | BIoU |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for r in run["strictness"]:
            L.append(
                f"| {r['rule']} | {r['routing_accuracy'] * 100:.1f}% | {r['fallback'] * 100:.1f}% "
                "| "
                f"{r['wrong_task'] * 100:.1f}% | {r['ood_accuracy'] * 100:.1f}% | {r['iou']:.2f} "
                f"| {r['biou']:.2f} |"
            )
    L.append("\n## The paper's numbers beside ours\n")
    L.append(
        "Paper: SAM ViT-B, 9 medical datasets, GPU, its full schedule; ours: LiteMedSAM, the real "
        "tasks above, "
        "CPU. The settings differ, so compare the gaps between methods rather than the absolute "
        "values.\n"
    )
    L.append(
        "| method | paper Last-IoU | paper Avg-IoU | paper FF-IoU | paper Last-BIoU | "
        + " | ".join(f"ours ({o['name']}) Last / Avg / FF IoU, Last-BIoU" for o in run["orders"])
        + " |"
    )
    L.append("|---|---|---|---|---|" + "---|" * len(run["orders"]))
    for meth in METHODS:
        pp = PAPER.get(meth, {})
        ours = []
        for o in run["orders"]:
            r = o["table"].get(meth, {})
            ours.append(
                " / ".join(fmt(r.get(k)) for k in ("Last-IoU", "Avg-IoU", "FF-IoU"))
                + f", {fmt(r.get('Last-BIoU'))}"
            )
        L.append(
            f"| {meth} | "
            + " | ".join(fmt(pp.get(k)) for k in ("Last-IoU", "Avg-IoU", "FF-IoU", "Last-BIoU"))
            + " | "
            + " | ".join(ours)
            + " |"
        )
    L.append("\nPaper's OOD routing accuracy on five unseen datasets: 99.42%.\n")
    L.append("## Time\n")
    L.append("| step | seconds |")
    L.append("|---|---|")
    for k, v in run["seconds"].items():
        L.append(f"| {k} | {v} |")
    for k, v in run.get("ca_sam_learn_seconds", {}).items():
        L.append(f"| learn_task '{k}' | {v} |")
    for o in run["orders"]:
        if o.get("naive_train_s") is not None:
            L.append(
                f"| naive fine-tuning, order {o['name']} (incl. evaluation) | "
                f"{o['naive_train_s']} |"
            )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
