"""Speed benchmark of the default backbone (LiteMedSAM) on this machine, in one run.

    python benchmarks/speed.py --json            # one JSON object on stdout, progress on stderr

Keys (all medians unless said otherwise; times in ms unless the name ends in _s):

- encoder_ms: one bare image-encoder forward, batch 1, 256 x 256 (the reference unit). Sampled
  before and after the learning runs, so it reflects the machine's load during the run.
- decode_bare_ms: one bare prompt-encoder + mask-decoder call for one box on a cached embedding.
- decode_ms: one box -> mask through ``casam.Predictor.predict`` on a cached embedding, with
  routing among the library's tasks, the routed task's (cached) aligned embedding, pre- and
  post-processing. Sampled interleaved with decode_bare_ms so load drifts cancel. Where the
  encoder runs in OpenVINO the predictor decodes plain boxes with the compiled box decoder
  (``decode_engine``), so decode_ms can be below the bare torch call.
- decode_first_ms: the first box on a newly routed image (the Alignment Layer runs once).
- route_ms_100 / route_ms_1000: route one cached embedding among 100 / 1000 tasks with the
  shipped (default) router: a ``casam.neighbours.NeighbourBank`` of that many tasks of
  ``KNN_IMAGES`` stored images with all 3 pooled views (one product); route_ms_paper_100 /
  route_ms_paper_1000: the paper's rule (a ``VAEBank`` of that many VAEs, one batched
  computation). The image's views are computed once per embedding (``Embedding.views``).
- learn_s_20: wall seconds of ``casam.training.learn_task`` with the default LearnSettings on
  20 real annotated slices, on a fresh Predictor (empty embedding cache): embeddings included.
- learn_iou_gain_default / learn_iou_gain_paper: mean IoU over a fixed held-out set of real
  slices (other slices of the same structure) of the learned task minus plain SAM's,
  ground-truth boxes; the paper's schedule is ``LearnSettings.paper()`` learned on the same
  20 slices.
- revisit_encoder_calls: encoder calls caused by revisiting slices that are cached (must be 0).
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

from _common import SPEED_TASK, box_of, heldout_iou, machine, median_ms, peak_rss_mb, speed_slices  # noqa: E402


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


class EncoderCounter:
    """Counts images through the backbone's encoder runtime (wraps its ``embed``)."""

    def __init__(self, runtime):
        self.calls = 0
        self._orig = runtime.embed

        def embed(x):
            self.calls += int(x.shape[0])
            return self._orig(x)

        runtime.embed = embed


KNN_IMAGES = 16


def random_knn_bank(n: int, seed: int = 0):
    from casam.config import LearnSettings
    from casam.neighbours import NeighbourBank

    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(KNN_IMAGES, 3, 256, generator=g) for _ in range(n)]
    s = LearnSettings()  # a task learned today: the default floor and separation
    names = [f"task {i}" for i in range(n)]
    return NeighbourBank(names, views, [0.05] * n, None, [s.knn_floor] * n, [s.knn_separation] * n)


def random_bank(n: int, seed: int = 0):
    from casam.router import VAE, VAEBank

    torch.manual_seed(seed)
    vaes = [VAE().eval().requires_grad_(False) for _ in range(n)]
    return VAEBank([f"task {i}" for i in range(n)], vaes, [0.2] * n, [16.5] * n)


def load_paper_ref(path: str, wait_s: float) -> dict | None:
    deadline = time.time() + wait_s
    while not Path(path).is_file() and time.time() < deadline:
        time.sleep(15)
    if not Path(path).is_file():
        return None
    tuned = json.loads(Path(path).read_text())
    row = next((r for r in tuned["rows"] if r["name"] == "paper"), None)
    if row is None:
        return None
    return {
        "file": path,
        "date": tuned["machine"]["date"],
        "iou": row["iou"],
        "iou_sam": tuned["heldout_iou_sam"],
        "gain": row["gain"],
        "train_s_cached_embeddings": row["train_s"],
        "threads": tuned["machine"]["threads"],
    }


def learn(images, masks, name, predictor, settings):
    from casam.training import learn_task

    marks: dict[str, list[float]] = {}

    def cb(p):
        marks.setdefault(p.stage, []).append(time.perf_counter())

    t0 = time.perf_counter()
    info = learn_task(images, masks, name, predictor=predictor, settings=settings, callback=cb)
    wall = time.perf_counter() - t0
    # seconds per stage: from the previous stage's last mark to this stage's last mark
    stages, prev = {}, t0
    for stage, ts in marks.items():
        stages[stage] = round(ts[-1] - prev, 2)
        prev = ts[-1]
    return info, wall, stages


def quality_keys(path: str, runtime: str) -> dict:
    q = json.loads(Path(path).read_text())["quality"]
    row = q.get(runtime)
    if row is None:
        return {"quality_from": path, "quality_missing_runtime": runtime}
    return {
        "iou_delta_default_vs_fp32": row["iou_delta_vs_fp32"],
        "iou_delta_sam_default_vs_fp32": row["iou_delta_sam_vs_fp32"],
        "iou_delta_task_default_vs_fp32": row["iou_delta_task_vs_fp32"],
        "route_agreement_default_vs_fp32": row["route_agreement_vs_fp32"],
        "quality_from": path,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--json", action="store_true", help="print one JSON object (else a readable list)"
    )
    ap.add_argument(
        "--data-cache",
        default=None,
        help="datasets cache folder "
        "(default: $CASAM_BENCH_DATA or ~/.cache/napari-casam/bench-data)",
    )
    ap.add_argument(
        "--no-paper", action="store_true", help="skip learning with the paper's schedule (slow)"
    )
    ap.add_argument(
        "--paper-from",
        metavar="JSON",
        default=None,
        help="take the paper schedule's held-out IoU gain from a tune_schedule.py result with a "
        "'paper' row (same slices, same held-out set) instead of learning it again",
    )
    ap.add_argument(
        "--paper-wait", type=float, default=0, help="seconds to wait for --paper-from to appear"
    )
    ap.add_argument(
        "--extra-tasks",
        metavar="LIBRARY",
        default=None,
        help="copy this library's tasks (same backbone) into the measured library before the "
        "decode "
        "and routing measurements, so the predictor routes among several real tasks "
        "(e.g. the quality benchmark's lib-all)",
    )
    ap.add_argument(
        "--runtimes-from",
        metavar="JSON",
        default=None,
        help="take iou_delta_default_vs_fp32 and route_agreement_default_vs_fp32 from an "
        "encoder_runtimes.py --json result (tasks learned on fp32 embeddings, used with each "
        "runtime)",
    )
    ap.add_argument("--repeats", type=int, default=40, help="samples of the decode / route medians")
    ap.add_argument(
        "--encoder-repeats", type=int, default=5, help="encoder samples before and after learning"
    )
    args = ap.parse_args(argv)

    from casam import LearnSettings, Predictor, TaskLibrary
    from casam.router import attention_pool
    from casam.sam import get_backbone

    out: dict = {"machine": machine(), "backbone": "litemedsam"}
    ref = get_backbone("litemedsam", runtime="torch")
    bb = get_backbone("litemedsam")  # the product's default runtime (or $CASAM_RUNTIME)
    out["backbone"] = bb.identity
    out["runtime"] = bb.runtime.describe()
    counter = EncoderCounter(bb.runtime)

    log("loading real slices ...")
    train, held = speed_slices(args.data_cache, 20)
    images = [im for im, _ in train]
    masks = [m for _, m in train]
    out["data"] = {
        "task": SPEED_TASK,
        "train_slices": len(train),
        "heldout_slices": len(held),
        "heldout": "the task's fixed test split (other axial blocks of the same CT)",
    }

    # ---- encoder: reference (fp32 torch) and default runtime, interleaved ----------------------
    from _speed_extra import encoder_figures, machine_rates, model_ready_s, volume_prepare_s

    log("encoder: FLOPs, machine rates, build of the default runtime ...")
    out.update(machine_rates())
    x, _ = ref.prepare(images[0])
    x8 = torch.cat([ref.prepare(im)[0] for im in images[:8]]).numpy()
    bb.runtime.prepare()
    enc_times: list[float] = []
    def_times: list[float] = []

    def sample_encoder(k: int) -> None:
        xn = x.numpy()
        ref.runtime.embed(xn)  # warm-up
        bb.runtime.embed(xn)
        for _ in range(k):
            for rt, acc in ((ref.runtime, enc_times), (bb.runtime, def_times)):
                t = time.perf_counter()
                rt.embed(xn)
                acc.append((time.perf_counter() - t) * 1000)

    log("encoder ...")
    sample_encoder(args.encoder_repeats)

    # ---- learn a task from 20 slices: default settings, fresh predictor -----------------------
    tmp = Path(tempfile.mkdtemp(prefix="casam-speed-"))
    lib = TaskLibrary(tmp / "library")
    p = Predictor(backbone=bb, library=lib)
    calls0 = counter.calls
    log("learning with the default settings (embeddings included) ...")
    info_d, learn_s, stages = learn(images, masks, "default", p, LearnSettings())
    out["learn_s_20"] = round(learn_s, 2)
    out["learn_stages_s"] = stages
    out["learn_encoder_calls"] = counter.calls - calls0
    out["default_settings"] = {k: v for k, v in info_d.settings.items() if k != "train_seconds"}

    # ---- a cached slice revisited costs no encoder call ----------------------------------------
    calls0, hits0 = counter.calls, p.cache.hits
    for img in images[:5]:
        p.embed(img)
    p.set_image(images[3])
    p.predict(box_of(masks[3]))
    out["revisit_encoder_calls"] = counter.calls - calls0
    out["revisit_cache_hits"] = p.cache.hits - hits0

    sample_encoder(args.encoder_repeats)
    out.update(encoder_figures(ref, bb, x, x8, enc_times, def_times, out))
    log("volume (100 real slices, cold cache) and model start-up ...")
    out["volume_prepare_s_100"] = volume_prepare_s(bb, args.data_cache)
    out["model_ready_s"] = model_ready_s()
    if args.runtimes_from:
        out.update(quality_keys(args.runtimes_from, bb.runtime.name))

    # ---- the paper's schedule on the same slices (embeddings now cached) ------------------------
    if args.paper_from:
        args.no_paper = True
    if not args.no_paper:
        log("learning with LearnSettings.paper() (embeddings cached) ...")
        _, paper_s, paper_stages = learn(images, masks, "paper", p, LearnSettings.paper())
        out["learn_s_20_paper_cached_embeddings"] = round(paper_s, 1)
        out["learn_stages_paper_s"] = paper_stages

    # ---- held-out IoU gains over plain SAM -------------------------------------------------------
    log("held-out IoU ...")
    sam_iou, sam_biou = heldout_iou(p, held, None)
    d_iou, d_biou = heldout_iou(p, held, "default")
    out["heldout_iou_sam"] = round(sam_iou, 4)
    out["heldout_iou_default"] = round(d_iou, 4)
    out["learn_iou_gain_default"] = round(d_iou - sam_iou, 4)
    out["heldout_biou_sam"], out["heldout_biou_default"] = round(sam_biou, 4), round(d_biou, 4)
    paper_ref = load_paper_ref(args.paper_from, args.paper_wait) if args.paper_from else None
    if paper_ref is not None:
        out["paper_reused"] = paper_ref
        out["learn_iou_gain_paper"] = paper_ref["gain"]
    elif not args.no_paper:
        pp_iou, pp_biou = heldout_iou(p, held, "paper")
        out["heldout_iou_paper"] = round(pp_iou, 4)
        out["learn_iou_gain_paper"] = round(pp_iou - sam_iou, 4)
        out["heldout_biou_paper"] = round(pp_biou, 4)

    # ---- decode: bare versus through the predictor (cached embedding, routed task) ---------------
    if args.extra_tasks:
        extra = TaskLibrary(args.extra_tasks, create=False)
        for info in extra.tasks(bb.identity):
            if info.name not in lib:
                t = extra.load(info.name)
                lib.save(t.info, t.alignment, t.router)
        p.reload_library()
    log("decode ...")
    routed = None
    for img, m in held:
        r = p.set_image(img)
        if r.task is not None:
            routed = (img, m)
            break
    if routed is None:  # nothing routed to a task: measure on a training slice (routes for sure)
        routed = (images[0], masks[0])
        p.set_image(images[0])
    img, m = routed
    box = box_of(m)
    e = p.embedding
    t = time.perf_counter()
    first = p.predict(box)
    out["decode_first_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["decode_routed_task"] = first.task
    out["library_tasks"] = len(p.task_names)
    z = e.z[None]
    bt = torch.from_numpy(e.geometry.boxes_to_input(box))
    pe = bb.prompt_encoder.get_dense_pe()

    def bare():
        with torch.no_grad():
            sparse, dense = bb.prompt_encoder(points=None, boxes=bt, masks=None)
            bb.mask_decoder(
                image_embeddings=z,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

    def full():
        pred = p.predict(box)
        assert pred.task is not None

    bare_t, full_t = [], []
    for f in (bare, full, bare, full):
        f()
    for _ in range(args.repeats):
        for f, acc in ((bare, bare_t), (full, full_t)):
            t = time.perf_counter()
            f()
            acc.append((time.perf_counter() - t) * 1000)
    dec = getattr(bb, "box_decoder", None)
    out["decode_engine"] = "openvino" if dec is not None and dec.ready else "torch"
    out["decode_bare_ms"] = round(float(np.median(bare_t)), 2)
    out["decode_ms"] = round(float(np.median(full_t)), 2)

    # ---- routing among 100 and 1000 tasks --------------------------------------------------------
    log("routing ...")
    f = attention_pool(e.z)
    for n in (100, 1000):
        bank, knn = random_bank(n), random_knn_bank(n)
        out[f"route_ms_paper_{n}"] = round(
            median_ms(lambda b=bank: b.route(f), args.repeats, warmup=3), 2
        )
        out[f"route_ms_{n}"] = round(
            median_ms(lambda b=knn: b.route(e.views), args.repeats, warmup=3), 2
        )

    p_route = median_ms(lambda: p.route_embedding(e), args.repeats, warmup=3)
    out["route_ms_library"] = round(p_route, 3)

    out["peak_rss_mb"] = peak_rss_mb()
    out["machine"]["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)

    # ---- targets ---------------------------------------------------------------------------------
    learn_target = 60 * out["encoder_ms_reference"] / 1000
    tg = {
        "decode_ratio": round(out["decode_ms"] / out["decode_bare_ms"], 3),
        "decode_ratio_ok": out["decode_ms"] <= 1.25 * out["decode_bare_ms"],
        "route_100_ok": out["route_ms_100"] <= 10,
        "route_1000_ok": out["route_ms_1000"] <= 50,
        "learn_target_s": round(learn_target, 1),
        "learn_ratio": round(out["learn_s_20"] / learn_target, 3),
        "learn_ok": out["learn_s_20"] <= learn_target,
        "learn_in_encoder_units": round(out["learn_s_20"] * 1000 / out["encoder_ms_reference"], 1),
        "encoder_speedup_ok_bf16_cpu": out["encoder_speedup"] >= 3.5,
        "encoder_speedup_ok_avx2_cpu": out["encoder_speedup"] >= 2,
        "volume_prepare_ok": out["volume_prepare_s_100"] <= 60,
        "model_ready_ok": out["model_ready_s"] <= 3,
        "revisit_no_encoder_call": out["revisit_encoder_calls"] == 0,
    }
    if "learn_iou_gain_paper" in out:
        gp = out["learn_iou_gain_paper"]
        tg["gain_ratio"] = round(out["learn_iou_gain_default"] / gp, 3) if gp > 0 else None
        tg["gain_ok"] = out["learn_iou_gain_default"] >= 0.95 * gp
    out["targets"] = tg

    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
