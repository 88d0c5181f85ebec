"""Routing benchmark: router designs side by side on cached pooled features of real data.

    nice -n 10 python benchmarks/routing.py --embed-only   # fill the embedding cache once
    python benchmarks/routing.py                           # compare designs (seconds)

Data: ``routing_data`` (8 real tasks with fit / val / test splits, by patient where a source has
two; 32 test and 11 validation OOD images). Every image is embedded once by LiteMedSAM into the
benchmarks' disk cache (``_common.EMB_CACHE``); the pooled statistics of each embedding are kept
in one ``.npz`` so that a design comparison never touches the encoder.

Designs are fitted on each task's ``fit`` slices (plus, where a design says so, augmented
copies of them: intensity window, gamma, noise, shift, scale, flip) and tuned on ``val`` and
``ood_val``; the tables report ``test`` and ``ood_test``. Writes results/routing.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, HERE, machine  # noqa: E402

FEAT_CACHE = EMB_CACHE.parent / "bench-routing"
AUG_COPIES = 1
VALAUG_COPIES = 2


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def pooled(z: torch.Tensor) -> dict[str, np.ndarray]:
    """(256, 64, 64) embedding -> cheap global views (float32): the paper's attention pool,
    channel mean, std and max, and a 2 x 2 grid of means (1024)."""
    from casam.router import attention_pool

    z = z.float()
    flat = z.reshape(256, -1)
    grid = torch.nn.functional.adaptive_avg_pool2d(z[None], 2)[0].reshape(-1)
    return {
        "attn": attention_pool(z).numpy(),
        "mean": flat.mean(1).numpy(),
        "std": flat.std(1).numpy(),
        "max": flat.amax(1).numpy(),
        "grid2": grid.numpy(),
    }


def collect(p, images: list[np.ndarray], store: dict, what: str, deadline: float) -> list[str]:
    """Embedding keys of ``images``; pooled views of new ones added to ``store``. Past
    ``deadline`` (perf_counter seconds) images not embedded yet are left out."""
    from casam.embeddings import image_key
    from casam.preprocess import check_image

    keys = []
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        k = image_key(check_image(img), p.backbone.identity)
        if k not in store:
            if time.perf_counter() > deadline and not p.is_cached(img):
                log(f"  {what}: embedding budget spent, image {i} left out")
                continue
            store[k] = pooled(p.embed(img).z)
        keys.append(k)
        if i % 20 == 0:
            log(f"  {what}: {i}/{len(images)} ({time.perf_counter() - t0:.0f} s)")
    return keys


def load_store(path: Path) -> dict:
    if not path.is_file():
        return {}
    d = np.load(path, allow_pickle=False)
    out: dict = {}
    for name in d.files:
        k, view = name.split("/")
        out.setdefault(k, {})[view] = d[name]
    return out


def save_store(store: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"{k}/{v}": a for k, d in store.items() for v, a in d.items()})
    tmp.replace(path)


def build_features(cache=None, budget_s: float = float("inf")) -> dict:
    """Every image's pooled views, grouped as the benchmark uses them (embeds what is missing)."""
    import routing_data as rd

    from casam import Predictor

    p = Predictor(library=False, disk_cache=EMB_CACHE)
    path = FEAT_CACHE / f"pooled-{p.backbone.identity.replace(':', '_')}.npz"
    store = load_store(path)
    tasks = rd.routing_tasks(cache, max_val=8)
    ood_test, ood_val = rd.ood_sets(cache)
    # most needed first: a budget cut leaves out new tasks, val and aug, never the OOD test set
    plan = [("ood", "test", [im for _, _, im in ood_test])]
    for t in tasks:
        plan += [(t.name, "fit", [im for im, _ in t.fit])]
        plan += [(t.name, "test", [im for im, _ in t.test])]
    plan += [("ood", "val", [im for *_, im in ood_val])]
    plan += [(t.name, "val", [im for im, _ in t.val]) for t in tasks]
    plan += [(t.name, "aug", rd.augmented(t.fit, AUG_COPIES, seed=i)) for i, t in enumerate(tasks)]
    # the new-patient proxy of validation: each validation slice as another scan would show it
    plan += [
        (t.name, "valaug", rd.augmented(t.val, VALAUG_COPIES, seed=100 + i))
        for i, t in enumerate(tasks)
    ]
    keys: dict = {}
    t0 = time.perf_counter()
    for name, part, images in plan:
        keys[(name, part)] = collect(p, images, store, f"{name}/{part}", t0 + budget_s)
        save_store(store, path)
    seconds = time.perf_counter() - t0
    return {
        "tasks": tasks,
        "ood": {"test": ood_test, "val": ood_val},
        "keys": keys,
        "store": store,
        "embed_seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--embed-only", action="store_true")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="embedding budget: images not embedded by then are left out (val, aug come last)",
    )
    ap.add_argument("--json", default=str(HERE / "results" / "routing.json"))
    ap.add_argument("--md", default=str(HERE.parent / "docs" / "benchmark-quality.md"))
    ap.add_argument(
        "--chosen",
        default=None,
        help="design name whose tables are written out (default: validation's pick)",
    )
    ap.add_argument("--note", action="append", default=[], help="a note for the markdown")
    ap.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="only re-write the markdown section from an earlier run's JSON (plus --note)",
    )
    args = ap.parse_args(argv)
    if args.render:
        import routing_designs

        run = json.loads(Path(args.render).read_text())
        run["notes"] = run.get("notes", []) + args.note
        Path(args.render).write_text(json.dumps(run, indent=1, default=str))
        write_section(Path(args.md), routing_designs.render(run))
        return 0
    run = {"machine": machine()}
    data = build_features(args.data_cache, args.budget_s)
    run["embed_seconds"] = round(data["embed_seconds"], 1)
    if args.embed_only:
        return 0
    import routing_designs

    run["n_images"] = sum(len(v) for v in data["keys"].values())
    run["parts"] = {f"{n}/{p}": len(v) for (n, p), v in data["keys"].items()}
    run.update(routing_designs.compare(data))
    run["chosen"] = args.chosen or run["chosen_by_validation"]
    run["notes"] = args.note
    run["machine"]["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    section = routing_designs.render(run)
    if args.md:
        write_section(Path(args.md), section)
    print(section)
    return 0


BEGIN, END = "<!-- routing.py: begin -->", "<!-- routing.py: end -->"


def write_section(md: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace (or append) a script's section of ``md`` between its markers (this script's by
    default)."""
    text = md.read_text() if md.is_file() else ""
    block = f"{begin}\n{section}{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    md.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
