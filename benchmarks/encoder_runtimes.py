"""Encoder runtimes compared on this machine: speed, numerics and what they do to quality.

    python benchmarks/encoder_runtimes.py --json > runtimes.json     # progress on stderr

1. Speed: every runtime of ``casam.runtime.RUNTIMES`` (installed ones) on one real slice,
   batch 1, sampled in interleaved rounds so load drifts hit all alike (median of ``--repeats``),
   and batch 8 per slice; the export/build time of each (cold cache).
2. Numerics: relative L2 error of each runtime's embeddings against fp32 torch, on the held-out
   (test) slices of the quality benchmark's tasks.
3. Quality: the quality benchmark's tasks (``datasets.DOMAIN_TASKS``, as ``quality.py``;
   ``--tasks`` chooses others) learned from fp32-torch embeddings of each task's training split
   (default LearnSettings), then, with each runtime's embeddings of the test slices and the OOD
   images, plain SAM's IoU, the routed (auto) IoU, and routing agreement with fp32 torch. This
   is the "task learned with one runtime, used with another" case. Every routing decision
   that differs from fp32 torch's is listed (``route_differences``).

Every figure comes with the CPU model, its flags and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, box_of, load_ood, load_tasks, machine  # noqa: E402
from datasets import DOMAIN_TASKS  # noqa: E402


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def build_runtimes(names: list[str], bb) -> tuple[dict, dict]:
    from casam.runtime import RUNTIMES, EncoderSource

    src = EncoderSource(bb.identity, bb.digest, bb.input_size, lambda: bb.image_encoder)
    rts, build_s = {}, {}
    for n in names:
        t = time.perf_counter()
        try:
            rt = RUNTIMES[n][1](src)
            rt.prepare()
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run here is reported
            log(f"  {n}: unavailable ({type(e).__name__}: {e})")
            continue
        rts[n] = rt
        build_s[n] = round(time.perf_counter() - t, 1)
        log(f"  {n}: ready in {build_s[n]} s")
    return rts, build_s


def time_runtimes(rts: dict, x1: np.ndarray, x8: np.ndarray, repeats: int) -> dict:
    times: dict[str, list[float]] = {n: [] for n in rts}
    for rt in rts.values():
        rt.embed(x1)  # warm-up
    for r in range(repeats):
        for n, rt in rts.items():
            t = time.perf_counter()
            rt.embed(x1)
            times[n].append((time.perf_counter() - t) * 1000)
        log(
            f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in times.items())
        )
    out = {
        n: {"ms": round(float(np.median(v)), 1), "samples": [round(t) for t in v]}
        for n, v in times.items()
    }
    for n, rt in rts.items():
        rt.embed(x8)
        b8 = []
        for _ in range(3):
            t = time.perf_counter()
            rt.embed(x8)
            b8.append((time.perf_counter() - t) * 1000 / len(x8))
        out[n]["batch8_per_slice_ms"] = round(float(np.median(b8)), 1)
        log(f"  {n}: batch 8 {out[n]['batch8_per_slice_ms']} ms per slice")
    return out


def predictors(names: list[str], library):
    """One Predictor per runtime (no disk cache: its float16 files would blur the numerics)."""
    from casam import Predictor
    from casam.sam import get_backbone

    return {
        n: Predictor(get_backbone("litemedsam", device="cpu", runtime=n), library=library)
        for n in names
    }


def learn_reference_tasks(tasks, p_ref, lib) -> None:
    from casam import LearnSettings
    from casam.training import learn_task

    for t in tasks:
        if t.name in p_ref.task_names:
            continue
        log(f"  learning {t.name} from {len(t.train)} slices (fp32 torch embeddings) ...")
        learn_task(
            [im for im, _ in t.train],
            [m for _, m in t.train],
            t.name,
            predictor=p_ref,
            settings=LearnSettings(),
        )
        p_ref.reload_library()


def evaluate(p, tasks, ood) -> dict:
    """Per test slice: embedding, plain-SAM IoU, routed IoU and route; per OOD image: route."""
    from casam.metrics import iou

    rows = []
    for t in tasks:
        for img, m in t.test:
            e = p.embed(img)
            gt = np.asarray(m) > 0
            sam = p.predict_embedding(e, box_of(gt), "sam")
            auto = p.predict_embedding(e, box_of(gt), "auto")
            rows.append(
                {"task": t.name, "z": e.z.numpy(), "iou_sam": iou(sam.masks[0], gt),
                 "iou_auto": iou(auto.masks[0], gt), "route": auto.task}
            )  # fmt: skip
    ood_routes = [p.route_embedding(p.embed(img)).task for _, img in ood]
    return {"rows": rows, "ood_routes": ood_routes}


def compare(ev: dict, ref: dict) -> dict:
    r, f = ev["rows"], ref["rows"]
    errs = [
        float(np.linalg.norm(a["z"] - b["z"]) / np.linalg.norm(b["z"]))
        for a, b in zip(r, f, strict=True)
    ]
    routes = [a["route"] for a in r] + ev["ood_routes"]
    routes_ref = [b["route"] for b in f] + ref["ood_routes"]
    agree = float(np.mean([a == b for a, b in zip(routes, routes_ref, strict=True)]))
    what = [f"{a['task']} test slice" for a in r] + ["OOD image"] * len(ev["ood_routes"])
    differ = [
        {"image": w, "index": i, "fp32": b, "runtime": a}
        for i, (w, a, b) in enumerate(zip(what, routes, routes_ref, strict=True))
        if a != b
    ]
    iou_sam = float(np.mean([a["iou_sam"] for a in r]))
    iou_auto = float(np.mean([a["iou_auto"] for a in r]))
    d_sam = iou_sam - float(np.mean([b["iou_sam"] for b in f]))
    d_auto = iou_auto - float(np.mean([b["iou_auto"] for b in f]))
    return {
        "rel_error_mean": round(float(np.mean(errs)), 5),
        "rel_error_max": round(float(np.max(errs)), 5),
        "heldout_iou_sam": round(iou_sam, 4),
        "heldout_iou_auto": round(iou_auto, 4),
        "iou_delta_sam_vs_fp32": round(d_sam, 4),
        "iou_delta_task_vs_fp32": round(d_auto, 4),
        "iou_delta_vs_fp32": round(min(d_sam, d_auto), 4),
        "route_agreement_vs_fp32": round(agree, 4),
        "route_differences": differ,
        "routed_to_own_task": round(float(np.mean([a["route"] == a["task"] for a in r])), 4),
        "ood_to_sam": round(float(np.mean([t is None for t in ev["ood_routes"]])), 4),
        "images_routed": len(routes),
    }


def main(argv=None) -> int:
    from casam.runtime import RUNTIMES, cpu_flags, installed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated names")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the speed median")
    ap.add_argument("--no-quality", action="store_true", help="speed only")
    ap.add_argument(
        "--tasks",
        default=",".join(DOMAIN_TASKS),
        help="comma-separated task names (default: the quality benchmark's; 'all': every task)",
    )
    ap.add_argument(
        "--library", default=None, help="keep the fp32-learned tasks here (reused next run)"
    )
    args = ap.parse_args(argv)

    import torch

    from casam import TaskLibrary
    from casam.sam import get_backbone

    names = [n for n in args.runtimes.split(",") if installed(n)]
    out: dict = {"machine": {**machine(), "cpu_flags": cpu_flags()}}
    bb = get_backbone("litemedsam", device="cpu", runtime="torch")
    tasks = load_tasks()
    if args.tasks != "all":
        keep = set(args.tasks.split(","))
        tasks = [t for t in tasks if t.name in keep]
    x1, _ = bb.prepare(tasks[0].test[0][0])
    x8 = torch.cat([bb.prepare(im)[0] for im, _ in tasks[0].test[:8]]).numpy()
    tmp_root = Path(tempfile.mkdtemp(prefix="casam-rt-"))
    os.environ.setdefault("CASAM_RUNTIME_CACHE", str(tmp_root / "runtimes"))  # cold builds
    log(f"building {names} (cold cache: {os.environ['CASAM_RUNTIME_CACHE']}) ...")
    rts, build_s = build_runtimes(names, bb)
    log("timing (interleaved rounds) ...")
    speed = time_runtimes(rts, x1.numpy(), x8, args.repeats)
    for n in speed:
        speed[n]["build_s"] = build_s[n]
        speed[n]["speedup_vs_torch"] = (
            round(speed["torch"]["ms"] / speed[n]["ms"], 2) if "torch" in speed else None
        )
    out["speed"] = speed
    out["machine"]["load_avg_1m_after_speed"] = round(os.getloadavg()[0], 2)
    if not args.no_quality:
        lib = TaskLibrary(Path(args.library) if args.library else tmp_root / "library")
        ps = predictors(list(rts), lib)
        log("learning the reference tasks ...")
        from casam import Predictor

        learn_reference_tasks(tasks, Predictor(bb, library=lib, disk_cache=EMB_CACHE), lib)
        ood = load_ood()
        evs = {}
        for n, p in ps.items():
            p.reload_library()
            log(f"evaluating {n} ...")
            evs[n] = evaluate(p, tasks, ood)
        out["quality"] = {n: compare(evs[n], evs["torch"]) for n in evs}
        out["quality_data"] = {
            "tasks": [t.name for t in tasks],
            "test_slices": len(evs["torch"]["rows"]),
            "ood_images": len(ood),
        }
    out["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1) if args.json else out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
