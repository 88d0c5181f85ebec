"""Throughput of the batch path: ``route`` and ``embed`` serial vs Dask LocalCluster (1, 2 workers).

    nice -n 10 python benchmarks/scale.py --n 200 --json benchmarks/results/scale.json

Inputs: ``--n`` real slices from benchmarks/datasets.py (every task's train and test slices,
evenly spread), each written as its own ``.npy`` file (work unit = one image file, the least
favourable granularity for the Dask path). Measured, per configuration (serial in this process;
``local:1`` and ``local:2``: LocalCluster with that many worker processes, 1 Dask thread each
and ``cores // N`` torch threads, so the 2 cores are never oversubscribed):

- ``embed``: cold cache, every slice encoded and written to a fresh disk cache (``--embed-n``
  inputs: the encoder dominates; a full 200-slice cold run per configuration takes hours on a
  loaded 2-core machine);
- ``route_warm``: ``--n`` inputs whose embeddings are all cached (read from disk, VAE routing):
  the dispatch overhead is the largest share of the work here.

Cluster start-up and each worker's one model load are timed apart from the throughput (they are
paid once per run, not per item). ``overhead_ms`` = (Dask 1-worker time - serial time) / items.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import evenly, load_tasks, machine  # noqa: E402


def real_slices(n: int) -> list[np.ndarray]:
    pairs = [p for t in load_tasks() for p in (*t.train, *t.test)]
    if len(pairs) < n:
        raise SystemExit(f"only {len(pairs)} real slices available, asked for {n}")
    return [p[0] for p in evenly(pairs, n)]  # (image, mask) pairs


def write_inputs(slices: list[np.ndarray], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(slices):
        p = folder / f"s{i:04d}.npy"
        np.save(p, img)
        paths.append(str(p))
    return paths


def _warm(command: str, unit, dask_worker=None) -> None:
    from casam.batch import run_unit
    from casam.cluster import PLUGIN

    run_unit(dask_worker.plugins[PLUGIN].predictor(), command, unit, {})


def run_config(
    command: str, paths: list[str], scheduler: str | None, cache: Path, warm: str
) -> dict:
    """Wall seconds of one configuration; start-up (cluster, model load, and one untimed unit
    on image ``warm`` per process, which is not among ``paths``) is timed apart."""
    from casam.batch import Unit, collect, run_unit
    from casam.predictor import Predictor
    from casam.runner import run_serial

    units = collect(paths)
    warm_unit = Unit(-1, warm)
    kwargs = {"library": False, "disk_cache": str(cache)}
    t0 = time.perf_counter()
    if scheduler is None:
        p = Predictor(**kwargs)
        run_unit(p, command, warm_unit, {})
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        outs = list(run_serial(p, command, units, {}))
    else:
        from casam import cluster

        client = cluster.open_client(scheduler, kwargs)
        client.run(_warm, command, warm_unit)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            outs = list(cluster.run_dask(client, command, units, {}))
        finally:
            cluster.close_client(client)
    wall = time.perf_counter() - t1
    failed = [o.error for o in outs if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} inputs failed, e.g. {failed[0]}")
    return {
        "items": len(units),
        "startup_s": round(startup, 2),
        "wall_s": round(wall, 3),
        "items_per_s": round(len(units) / wall, 3),
        "ms_per_item": round(1000 * wall / len(units), 2),
    }


def overheads(res: dict, key: str) -> dict:
    s, one = res[key]["serial"], res[key]["local:1"]
    over = one["ms_per_item"] - s["ms_per_item"]
    return {"overhead_ms": round(over, 2), "overhead_pct": round(100 * over / s["ms_per_item"], 1)}


def projection(res: dict) -> dict:
    """What a bigger node gives from the per-item costs (see docs/cluster.md)."""
    enc_ms = res["embed"]["serial"]["ms_per_item"]
    over = max(0.0, res["embed_overhead"]["overhead_ms"])
    per_item = enc_ms * 2  # measured with 2 cores; one core takes about twice as long
    return {
        "cpu_16_cores_8_workers_items_per_s": round(8 * 1000 / (per_item / 2 + over), 2),
        "note": "8 workers x 2 torch threads; assumes memory bandwidth scales (it does not "
        "fully) and that the per-item overhead stays as measured",
    }


def cache_formats(folder: Path, n: int = 40) -> dict:
    """ms per entry to write / read one (256, 64, 64) float16 embedding: the disk cache's
    ``.npy`` files (tmp + os.replace) against a zarr store (one array per key), if installed."""
    rng = np.random.default_rng(0)
    zs = [rng.standard_normal((256, 64, 64)).astype(np.float16) for _ in range(n)]
    out: dict = {}
    t = time.perf_counter()
    for i, z in enumerate(zs):
        _npy_put(folder, i, z)
    out["npy_write_ms"] = round(1000 * (time.perf_counter() - t) / n, 2)
    t = time.perf_counter()
    for i in range(n):
        np.load(folder / "npy" / f"k{i}.npy", allow_pickle=False).astype(np.float32)
    out["npy_read_ms"] = round(1000 * (time.perf_counter() - t) / n, 2)
    out["npy_mb_per_entry"] = round((folder / "npy" / "k0.npy").stat().st_size / 2**20, 2)
    try:
        import zarr
    except ImportError:
        return out
    root = zarr.open_group(str(folder / "zarr"), mode="w")
    t = time.perf_counter()
    for i, z in enumerate(zs):
        root.create_array(f"k{i}", data=z, chunks=z.shape)
    out["zarr_write_ms"] = round(1000 * (time.perf_counter() - t) / n, 2)
    t = time.perf_counter()
    for i in range(n):
        np.asarray(zarr.open_group(str(folder / "zarr"), mode="r")[f"k{i}"][...], np.float32)
    out["zarr_read_ms"] = round(1000 * (time.perf_counter() - t) / n, 2)
    size = sum(p.stat().st_size for p in (folder / "zarr").rglob("*") if p.is_file())
    out["zarr_mb_per_entry"] = round(size / n / 2**20, 2)
    out["zarr_version"] = zarr.__version__
    return out


def _npy_put(folder: Path, i: int, z: np.ndarray) -> None:
    path = folder / "npy" / f"k{i}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, z, allow_pickle=False)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="inputs of the warm route runs")
    ap.add_argument("--embed-n", type=int, default=24, help="inputs of the cold embed runs")
    ap.add_argument(
        "--distinct",
        type=int,
        default=None,
        help="route over --n files cycling through the first K slices (default: all distinct; "
        "the cache must first embed each distinct slice once)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    res: dict = {"machine": machine(), "n_route": args.n, "n_embed": args.embed_n}
    res["n_route_distinct"] = args.distinct or args.n
    work = Path(tempfile.mkdtemp(prefix="casam-scale-"))
    try:
        res["cache_formats"] = cache_formats(work / "formats")
        print(f"cache formats: {res['cache_formats']}", file=sys.stderr, flush=True)
        slices = real_slices(args.n + 1)
        warm = write_inputs(slices[-1:], work / "warm")[0]
        slices = slices[:-1]
        distinct = write_inputs(slices, work / "in")
        configs = (None, "local:1", "local:2")
        res["embed"] = {}
        for sched in configs:
            name = sched or "serial"
            cache = work / f"cache-{name}"
            res["embed"][name] = run_config("embed", distinct[: args.embed_n], sched, cache, warm)
            print(f"embed {name}: {res['embed'][name]}", file=sys.stderr, flush=True)
        res["embed_overhead"] = overheads(res, "embed")
        warm_cache = work / "cache-serial"
        k = args.distinct or args.n
        route_in = write_inputs([slices[i % k] for i in range(args.n)], work / "route")
        run_config("embed", route_in[:k], None, warm_cache, warm)  # fill: all cached
        res["route_warm"] = {}
        for sched in configs:
            name = sched or "serial"
            res["route_warm"][name] = run_config("route", route_in, sched, warm_cache, warm)
            print(f"route {name}: {res['route_warm'][name]}", file=sys.stderr, flush=True)
        res["route_overhead"] = overheads(res, "route_warm")
        res["projection"] = projection(res)
        res["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
