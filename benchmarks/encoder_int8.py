"""INT8 encoders by NNCF post-training quantization, measured on IoU (issue 16).

    python benchmarks/encoder_int8.py --library /tmp/lib          # progress on stderr
    python benchmarks/encoder_int8.py --variants default,no-sq     # some variants only

Needs NNCF, which is not a dependency of the project (no INT8 runtime ships): ``pip install
--no-deps nncf`` plus its missing dependencies (here ninja, pydot, scikit-learn, tabulate), so
that it does not move openvino or torch.

The OpenVINO fp32 export of the product (``casam.runtime``, the ``openvino`` runtime's cached
``encoder.xml``, batch 1) is quantized by ``nncf.quantize`` in several variants (``VARIANTS``),
calibrated ONLY on training-split slices of the quality benchmark's tasks
(``datasets.DOMAIN_TASKS``), preprocessed by the product (``Backbone.prepare``). Every third
training slice of each task (``validation``) is kept out of calibration and used to choose the
variant; the test slices are used for the figures only. Each variant is compiled for the CPU
with fp32 for whatever stays in float (``INFERENCE_PRECISION_HINT=f32``: what a CPU without
bf16, e.g. AVX2-only, would run); the chosen one also with bf16 for the rest (this CPU).

Per variant:

- build (quantization) time;
- relative L2 error of its embeddings against fp32 torch on the validation and test slices;
- plain-SAM mean IoU with the ground-truth box (decoded by ``casam.Predictor`` from the
  variant's embeddings) on the validation and test slices, and its delta against fp32 torch's
  embeddings decoded the same way; with learned tasks (``--library``), the routed (auto) IoU on
  the test slices and the routing agreement with fp32 torch on the test slices and the OOD
  images (``encoder_runtimes.py``'s measure, default router);
- ms per slice: batch 1, the runtime's threads (torch's), median of ``--repeats`` interleaved
  rounds with the product's OpenVINO fp32 and bf16 runtimes in the same process, so load drifts
  hit all alike.

Choice (fixed before the run): the variant with the highest validation plain-SAM IoU delta;
within 0.1 point of it, the one with the lower validation relative error.

Quantized models are kept in ``--work`` (a re-run reuses them and their build time). The fp32
torch reference embeddings come from the benchmarks' embedding cache (``reference``). Figures go
to ``--out`` (JSON, with ``_common.machine()``, the load averages and the date) and, as a table,
to stdout. ``--no-speed`` skips the timing (e.g. under ``ONEDNN_MAX_CPU_ISA=AVX2``, which caps
oneDNN's kernels, the int8 ones included, to what an AVX2-only CPU runs: its accuracy there;
the kernels used are recorded as ``primitive_types``).
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

from _common import EMB_CACHE, box_of, evenly, load_ood, load_tasks, machine  # noqa: E402
from datasets import DOMAIN_TASKS  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "encoder-int8-zen5.json"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def loads() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


#: node name patterns of the OpenVINO export: the patch embedding and the MBConv stage (layers.0,
#: full resolution); the neck (the last two convolutions and their LayerNorms)
STEM, NECK = ["/patch_embed/.*", "/layers.0/.*"], ["/neck/.*"]
SDPA = "ScaledDotProductAttention"

#: name -> nncf.quantize keyword arguments (built lazily: nncf is imported only when used).
#: "calib": how many calibration slices ("all": every non-validation training slice).
VARIANTS = {
    # ModelType.TRANSFORMER's defaults: preset MIXED, SmoothQuant on MatMuls (alpha 0.95)
    "default": {"calib": 64},
    "no-sq": {"calib": 64, "sq": (-1, -1)},
    "sq-0.5": {"calib": 64, "sq": (-1, 0.5)},
    "sq-conv": {"calib": 64, "sq": (0.5, 0.95)},
    # ignored_scope: these parts kept in float
    "float-stem": {"calib": 64, "ignore": STEM},
    "float-patch": {"calib": 64, "ignore": STEM[:1]},
    "float-layers0": {"calib": 64, "ignore": STEM[1:]},
    "float-neck": {"calib": 64, "ignore": NECK},
    "float-stem-neck": {"calib": 64, "ignore": [*STEM, *NECK]},
    "float-attn": {"calib": 64, "types": [SDPA]},
    "performance": {"calib": 64, "preset": "performance"},
    "no-fbc": {"calib": 64, "fbc": False},
    "calib-all": {"calib": "all"},
    "float-stem-neck-all": {"calib": "all", "ignore": [*STEM, *NECK]},
    "float-stem-neck-attn": {"calib": 64, "ignore": [*STEM, *NECK], "types": [SDPA]},
}


def quantize_kwargs(spec: dict) -> dict:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    kw: dict = {"model_type": nncf.ModelType.TRANSFORMER}
    if spec.get("preset") == "performance":
        kw["preset"] = nncf.QuantizationPreset.PERFORMANCE
    if "fbc" in spec:
        kw["fast_bias_correction"] = spec["fbc"]
    if "ignore" in spec or "types" in spec:
        kw["ignored_scope"] = nncf.IgnoredScope(
            patterns=spec.get("ignore", []), types=spec.get("types", []), validate=False
        )
    if "sq" in spec:
        conv, matmul = spec["sq"]
        kw["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=conv, matmul=matmul)
        )
    return kw


def splits(tasks) -> tuple[list, list, list]:
    """(calibration pool, validation, test) as (task name, image, mask); validation: every third
    training slice of each task (index 1, 4, 7, ...)."""
    pool, val, test = [], [], []
    for t in tasks:
        for i, (img, m) in enumerate(t.train):
            (val if i % 3 == 1 else pool).append((t.name, img, m))
        test += [(t.name, img, m) for img, m in t.test]
    return pool, val, test


def fp32_openvino_xml(bb) -> Path:
    """The product's fp32 OpenVINO export (batch 1), built in the runtime cache if missing."""
    from casam.runtime import RUNTIMES, EncoderSource, runtime_cache_dir
    from casam.runtime._store import cache_key

    src = EncoderSource(bb.identity, bb.digest, bb.input_size, lambda: bb.image_encoder)
    rt = RUNTIMES["openvino"][1](src)
    rt.prepare()
    return runtime_cache_dir() / cache_key(rt.fields(1)) / "encoder.xml"


def build_variant(name: str, spec: dict, xml: Path, calib: list, work: Path) -> dict:
    """Quantize (or reuse) one variant; returns its facts (path, build seconds, slices)."""
    import nncf
    import openvino as ov

    folder = work / "models" / name
    meta = folder / "meta.json"
    if meta.exists():
        return json.loads(meta.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    n = len(calib) if spec["calib"] == "all" else int(spec["calib"])
    t = time.perf_counter()
    model = ov.Core().read_model(str(xml))
    q = nncf.quantize(model, nncf.Dataset(calib[:n]), subset_size=n, **quantize_kwargs(spec))
    build_s = round(time.perf_counter() - t, 1)
    ov.save_model(q, str(folder / "encoder.xml"), compress_to_fp16=False)
    facts = {
        "xml": str(folder / "encoder.xml"),
        "build_s": build_s,
        "calib_slices": n,
        "load_during_build": loads(),
        "spec": spec,
    }
    meta.write_text(json.dumps(facts, indent=1))
    return facts


def compile_ov(xml: str, precision: str = "f32"):
    import openvino as ov
    import torch

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": int(torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",
    }
    return core.compile_model(core.read_model(xml), "CPU", config)


def run_ov(model, x: np.ndarray) -> np.ndarray:
    return np.array(model(x)[0], dtype=np.float32, copy=True)


def embedding(p, img: np.ndarray, z, tag: str):
    """The ``Embedding`` ``Predictor.embed`` would make of ``img`` had its encoder given ``z``."""
    import torch

    from casam.embeddings import Embedding, image_key
    from casam.router import attention_pool

    z = torch.as_tensor(z, dtype=torch.float32)
    geo = p.backbone.geometry(*np.asarray(img).shape[:2])
    key = image_key(np.asarray(img), f"{p.backbone.embed_identity}|{tag}")
    return Embedding(key, z, geo, attention_pool(z, p.temperature))


def score(p, items: list, zs: list, tag: str, auto: bool) -> list[dict]:
    """Per slice: plain-SAM IoU with the ground-truth box (and routed IoU and route if
    ``auto``), decoded by the Predictor from the given embeddings."""
    from casam.metrics import iou

    rows = []
    for (task, img, m), z in zip(items, zs, strict=True):
        e = embedding(p, img, z, tag)
        gt = np.asarray(m) > 0
        row = {"task": task, "iou_sam": iou(p.predict_embedding(e, box_of(gt), "sam").masks[0], gt)}
        if auto:
            a = p.predict_embedding(e, box_of(gt), "auto")
            row.update(iou_auto=iou(a.masks[0], gt), route=a.task)
        rows.append(row)
    return rows


def rel_errors(zs: list, refs: list) -> list[float]:
    return [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(zs, refs, strict=True)]


def summary(rows, ref_rows, errs) -> dict:
    d = float(np.mean([r["iou_sam"] for r in rows]) - np.mean([r["iou_sam"] for r in ref_rows]))
    out = {
        "rel_error_mean": round(float(np.mean(errs)), 4),
        "rel_error_max": round(float(np.max(errs)), 4),
        "iou_sam": round(float(np.mean([r["iou_sam"] for r in rows])), 4),
        "iou_sam_delta_points": round(100 * d, 2),
        "iou_sam_delta_per_task_points": {
            t: round(
                100
                * float(
                    np.mean([r["iou_sam"] for r in rows if r["task"] == t])
                    - np.mean([r["iou_sam"] for r in ref_rows if r["task"] == t])
                ),
                2,
            )
            for t in dict.fromkeys(r["task"] for r in rows)
        },
        "slices": len(rows),
    }
    if rows and "iou_auto" in rows[0]:
        da = np.mean([r["iou_auto"] for r in rows]) - np.mean([r["iou_auto"] for r in ref_rows])
        out["iou_auto"] = round(float(np.mean([r["iou_auto"] for r in rows])), 4)
        out["iou_auto_delta_points"] = round(100 * float(da), 2)
    return out


def routing(p, ood: list, test_rows, ref_rows, ood_z: list, ood_ref: list, tag: str) -> dict:
    """Routing agreement with fp32 torch on the test slices and the OOD images."""
    routes = [r["route"] for r in test_rows]
    routes += [
        p.route_embedding(embedding(p, img, z, tag)).task
        for (_, img), z in zip(ood, ood_z, strict=True)
    ]
    refs = [r["route"] for r in ref_rows]
    refs += [
        p.route_embedding(embedding(p, img, z, "fp32")).task
        for (_, img), z in zip(ood, ood_ref, strict=True)
    ]
    what = [f"{r['task']} test slice" for r in test_rows] + ["OOD image"] * len(ood)
    return {
        "route_agreement_vs_fp32": round(
            float(np.mean([a == b for a, b in zip(routes, refs, strict=True)])), 4
        ),
        "images_routed": len(routes),
        "route_differences": [
            {"image": w, "index": i, "fp32": b, "int8": a}
            for i, (w, a, b) in enumerate(zip(what, routes, refs, strict=True))
            if a != b
        ],
    }


def reference(p_ref, images: list) -> list:
    """fp32 torch embeddings of ``images``: the benchmarks' disk cache (float16 copies of fp32
    torch embeddings, filled by quality.py; computed by torch where missing). Rounding to
    float16 changes an embedding by about 5e-4 (relative), far below INT8's errors."""
    zs = []
    for i, img in enumerate(images):
        zs.append(p_ref.embed(img).z.float().numpy())
        if i % 50 == 0:
            log(f"  fp32 torch {i + 1}/{len(images)}")
    return zs


def primitive_types(model) -> dict:
    """How many layers of the compiled model run each kind of kernel (e.g. brgconv_avx512_I8)."""
    from collections import Counter

    return dict(
        Counter(
            op.get_rt_info()["primitiveType"].astype(str)
            for op in model.get_runtime_model().get_ops()
        ).most_common()
    )


def time_models(models: dict, x1: np.ndarray, repeats: int) -> dict:
    times: dict[str, list[float]] = {n: [] for n in models}
    for f in models.values():
        f(x1)  # warm-up
    for r in range(repeats):
        for n, f in models.items():
            t = time.perf_counter()
            f(x1)
            times[n].append((time.perf_counter() - t) * 1000)
        log(
            f"  round {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in times.items())
        )
    return {
        n: {"ms": round(float(np.median(v)), 1), "samples": [round(t) for t in v]}
        for n, v in times.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    ap.add_argument("--work", default="~/.cache/napari-casam/bench-int8", help="models, refs")
    ap.add_argument("--library", default=None, help="fp32-learned tasks (learned here if missing)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the speed median")
    ap.add_argument("--out", default=str(OUT), help="JSON file written (after every variant)")
    ap.add_argument("--best", default=None, help="carry this variant forward instead of choosing")
    ap.add_argument("--no-speed", action="store_true", help="accuracy only")
    ap.add_argument(
        "--results-from",
        default=None,
        help="an earlier run's JSON: variants whose model is reused keep its figures (not timing)",
    )
    args = ap.parse_args(argv)

    import torch

    from casam import Predictor, TaskLibrary
    from casam.runtime import RUNTIMES, EncoderSource
    from casam.sam import get_backbone

    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CASAM_RUNTIME_CACHE", str(work / "runtimes"))
    out: dict = {"machine": machine(), "loads_at_start": loads(), "variants": {}}
    out_path = Path(args.out)

    def save() -> None:
        out["loads_now"] = loads()
        out_path.write_text(json.dumps(out, indent=1) + "\n")

    bb = get_backbone("litemedsam", device="cpu", runtime="torch")
    tasks = [t for t in load_tasks() if t.name in DOMAIN_TASKS]
    pool, val, test = splits(tasks)
    calib_items = evenly(pool, len(pool))  # all, in task order; variants take evenly spread
    prep = {id(im): bb.prepare(im)[0].numpy() for _, im, _ in pool + val + test}
    ood = load_ood()
    ood_x = [bb.prepare(img)[0].numpy() for _, img in ood]
    out["data"] = {
        "tasks": [t.name for t in tasks],
        "calibration_pool": len(pool),
        "validation": len(val),
        "test": len(test),
        "ood": len(ood),
    }
    log(f"data: {out['data']}")

    xml = fp32_openvino_xml(bb)
    log(f"fp32 OpenVINO export: {xml}")

    log("fp32 torch reference embeddings ...")
    p_ref = Predictor(bb, library=False, disk_cache=EMB_CACHE)
    ref = {
        "val": reference(p_ref, [im for _, im, _ in val]),
        "test": reference(p_ref, [im for _, im, _ in test]),
        "ood": reference(p_ref, [im for _, im in ood]),
    }
    del p_ref
    lib = TaskLibrary(Path(args.library).expanduser() if args.library else work / "library")
    p = Predictor(bb, library=lib)
    if args.library is None or not all(t.name in p.task_names for t in tasks):
        from encoder_runtimes import learn_reference_tasks

        learn_reference_tasks(tasks, p, lib)
    p.reload_library()
    auto = all(t.name in p.task_names for t in tasks)
    ref_rows = {
        "val": score(p, val, ref["val"], "fp32", False),
        "test": score(p, test, ref["test"], "fp32", auto),
    }
    out["fp32_torch"] = {
        "val_iou_sam": round(float(np.mean([r["iou_sam"] for r in ref_rows["val"]])), 4),
        "test_iou_sam": round(float(np.mean([r["iou_sam"] for r in ref_rows["test"]])), 4),
    }
    log(f"fp32 torch: {out['fp32_torch']}")
    save()

    names = [n for n in args.variants.split(",") if n]
    earlier = {}
    if args.results_from:
        prev = json.loads(Path(args.results_from).read_text())
        if prev["fp32_torch"] == out["fp32_torch"]:
            earlier = prev["variants"]
    calib = [prep[id(im)] for _, im, _ in calib_items]
    compiled = {}
    for name in names:
        spec = VARIANTS[name]
        n = len(calib) if spec["calib"] == "all" else int(spec["calib"])
        log(f"{name}: quantizing on {n} calibration slices ({spec}) ...")
        facts = build_variant(name, spec, xml, evenly(calib, n), work)
        model = compile_ov(facts["xml"])
        compiled[name] = model
        if name in earlier and earlier[name]["build_s"] == facts["build_s"]:
            out["variants"][name] = {**earlier[name], "figures_from": args.results_from}
            log(f"{name}: same model as in {args.results_from}, figures taken from there")
            continue
        res = {**facts}
        for split, items in (("val", val), ("test", test)):
            zs = [run_ov(model, prep[id(im)])[0] for _, im, _ in items]
            rows = score(p, items, zs, name, auto and split == "test")
            res[split] = summary(rows, ref_rows[split], rel_errors(zs, ref[split]))
            if split == "test" and auto:
                ood_z = [run_ov(model, x)[0] for x in ood_x]
                res["test"].update(routing(p, ood, rows, ref_rows["test"], ood_z, ref["ood"], name))
        out["variants"][name] = res
        log(
            f"{name}: build {facts['build_s']} s; val err {res['val']['rel_error_mean']}, "
            f"IoU {res['val']['iou_sam_delta_points']:+.2f} pt; test err "
            f"{res['test']['rel_error_mean']}, IoU {res['test']['iou_sam_delta_points']:+.2f} pt"
            + (f", routes {res['test']['route_agreement_vs_fp32']}" if auto else "")
        )
        save()

    done = out["variants"]
    top = max(v["val"]["iou_sam_delta_points"] for v in done.values())
    near = [n for n, v in done.items() if v["val"]["iou_sam_delta_points"] >= top - 0.1]
    best = args.best or min(near, key=lambda n: done[n]["val"]["rel_error_mean"])
    out["chosen"] = {"variant": best, "how": "--best" if args.best else "validation"}
    log(f"carried forward: {best}")

    out["chosen"]["primitive_types"] = primitive_types(compiled[best])
    out["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    save()
    # the chosen variant with bf16 for what stays in float (this CPU's native bf16)
    try:
        m_bf16 = compile_ov(done[best]["xml"], "bf16")
    except RuntimeError as e:  # e.g. under ONEDNN_MAX_CPU_ISA=AVX2: no bf16 kernels
        m_bf16 = None
        out["chosen"]["with_bf16_rest_test"] = (
            "not compiled: " + [ln for ln in str(e).splitlines() if ln.strip()][-1]
        )
    if m_bf16 is not None:
        zs = [run_ov(m_bf16, prep[id(im)])[0] for _, im, _ in test]
        rows = score(p, test, zs, best + "+bf16", auto)
        res = summary(rows, ref_rows["test"], rel_errors(zs, ref["test"]))
        if auto:
            ood_z = [run_ov(m_bf16, x)[0] for x in ood_x]
            res.update(routing(p, ood, rows, ref_rows["test"], ood_z, ref["ood"], best + "+bf16"))
        out["chosen"]["with_bf16_rest_test"] = res
        out["chosen"]["primitive_types_bf16_rest"] = primitive_types(m_bf16)
    save()
    if args.no_speed:
        print(json.dumps({"chosen": out["chosen"], "variants": done}, indent=1))
        return 0

    log(f"timing (interleaved, batch 1, {torch.get_num_threads()} threads) ...")
    src = EncoderSource(bb.identity, bb.digest, bb.input_size, lambda: bb.image_encoder)
    fns = {}
    for rn in ("openvino", "openvino-bf16"):
        rt = RUNTIMES[rn][1](src)
        rt.prepare()
        fns[rn] = rt.embed
    for name, model in compiled.items():
        fns[f"int8 {name}"] = lambda x, m=model: run_ov(m, x)
    if m_bf16 is not None:
        fns[f"int8 {best} +bf16"] = lambda x: run_ov(m_bf16, x)
    out["loads_before_speed"] = loads()
    out["speed"] = time_models(fns, prep[id(test[0][1])], args.repeats)
    out["loads_after_speed"] = loads()
    save()

    f32, b16 = out["speed"]["openvino"]["ms"], out["speed"]["openvino-bf16"]["ms"]
    print(f"fp32 torch: {out['fp32_torch']}; OpenVINO fp32 {f32} ms, bf16 {b16} ms per slice")
    print("variant | build s | val err | val IoU d | test err | test IoU d | auto d | routes | ms")
    for n, v in done.items():
        t = v["test"]
        print(
            f"{n} | {v['build_s']} | {v['val']['rel_error_mean']} | "
            f"{v['val']['iou_sam_delta_points']:+.2f} | {t['rel_error_mean']} | "
            f"{t['iou_sam_delta_points']:+.2f} | {t.get('iou_auto_delta_points', '-')} | "
            f"{t.get('route_agreement_vs_fp32', '-')} | {out['speed'][f'int8 {n}']['ms']}"
        )
    print(f"carried forward: {best}; with bf16 rest: {out['chosen']['with_bf16_rest_test']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
