"""Batch commands on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes
on 127.0.0.1 (random free ports), against the serial run on the repository's real slices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from casam_testing import alignment_state, make_info, router_state

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "data"
CASAM = [sys.executable, "-m", "casam.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, CASAM_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def _workers(address: str) -> int:
    from distributed import Client

    with Client(address, timeout="10s") as c:
        return len(c.scheduler_info()["workers"])


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded workers (no nanny: a SIGKILL really kills one)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = ["--no-dashboard"]
    procs = [
        subprocess.Popen(
            ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    ["dask", "worker", address, "--nthreads", "1", "--no-nanny"]
                    + ["--host", "127.0.0.1", *common],
                    env=_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _workers(address) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the dask scheduler and workers did not start within 60 s")
        yield address, procs[1:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four real slices (2 CT lung, 2 MR brain) as files, their masks, a one-task library."""
    from casam.checkpoints import backbone_identity
    from casam.library import TaskLibrary
    from casam.task_tensors import vae_from_state

    root = tmp_path_factory.mktemp("cluster")
    for sub in ("img", "msk", "out"):
        (root / sub).mkdir()
    for kind, ks in (("ct_lung_tumour", (4, 12)), ("mr_brain_tumour", (6, 14))):
        images = tifffile.imread(DATA / kind / "images.tif")
        masks = tifffile.imread(DATA / kind / "masks.tif")
        for k in ks:
            np.save(root / "img" / f"{kind}_{k:02d}.npy", images[k])
            np.save(root / "msk" / f"{kind}_{k:02d}.npy", masks[k])
    router = router_state(seed=0)
    with torch.no_grad():
        own = vae_from_state(router).neg_elbo(router["features"], 16.5, sample=False).numpy()
    info = make_info(
        "probe", backbone_identity("litemedsam"), threshold=float(np.percentile(own, 97))
    )
    TaskLibrary(root / "lib").save(info, alignment_state(), router)
    return root


def casam(*argv, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [*CASAM, *map(str, argv)], env=_env(), capture_output=True, text=True, timeout=900
    )
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_route_and_eval_on_the_cluster_equal_the_serial_run(cluster, data):
    address, _ = cluster
    lib = ["--library", data / "lib"]
    serial = casam("route", data / "img", "--json", *lib)
    cache = ["--cache", data / "cache"]  # filled by the workers here, read by later runs
    dist = casam("route", data / "img", "--json", *lib, *cache, "--scheduler", address)
    assert dist.stdout == serial.stdout
    rows = [json.loads(x) for x in serial.stdout.splitlines()]
    assert [Path(r["image"]).name for r in rows] == sorted(p.name for p in (data / "img").iterdir())
    assert all(r["score"] is not None for r in rows)  # real VAE scores, not a constant
    assert len({r["score"] for r in rows}) == len(rows)
    assert "4/4 done, 0 failed" in dist.stderr

    assert len(list((data / "cache").glob("*.npy"))) == 4
    ev = ["eval", "--images", data / "img", "--masks", data / "msk", "--json", *lib, *cache]
    serial = casam(*ev)
    dist = casam(*ev, "--scheduler", address)
    assert dist.stdout == serial.stdout
    result = json.loads(serial.stdout)
    assert result["n_images"] == 4 and 0.3 < result["iou"] <= 1.0


def test_a_bad_input_fails_alone_and_the_exit_code_counts_it(cluster, data, tmp_path):
    address, _ = cluster
    (tmp_path / "broken.png").write_bytes(b"not a png")
    manifest = tmp_path / "m.jsonl"
    good = sorted((data / "img").iterdir())[0]
    manifest.write_text(
        "\n".join(json.dumps({"image": str(p)}) for p in (good, tmp_path / "broken.png")) + "\n"
    )
    r = casam(
        "route",
        manifest,
        "--json",
        "--library",
        data / "lib",
        "--cache",
        data / "cache",
        "--scheduler",
        address,
        check=False,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert rows[0]["image"] == str(good) and "error" not in rows[0]
    assert rows[1]["image"] == str(tmp_path / "broken.png")
    assert "cannot read" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert "Traceback" not in r.stderr and "1 of 2 inputs failed" in r.stderr


def _manifest(data: Path, path: Path, n_copies: int) -> list[str]:
    """Segment manifest: every slice ``n_copies`` times under distinct names (more work)."""
    rows = []
    for j in range(n_copies):
        for img in sorted((data / "img").iterdir()):
            copy = data / "img_copies" / f"{j}_{img.name}"
            copy.parent.mkdir(exist_ok=True)
            if not copy.exists():
                copy.write_bytes(img.read_bytes())
            rows.append({"image": str(copy), "mask": str(data / "msk" / img.name)})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return [Path(r["image"]).name.removesuffix(".npy") + ".tif" for r in rows]


@pytest.fixture(scope="module")
def reference(data):
    """Masks of the 4 slices from the serial batch run (no Dask), the ground truth of validity."""
    ref = data / "ref"
    ref.mkdir()
    rows = [{"image": str(p), "mask": str(data / "msk" / p.name)} for p in (data / "img").iterdir()]
    (data / "ref.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    casam("segment", data / "ref.jsonl", "--out", ref, "--library", data / "lib",
          "--cache", data / "cache")  # fmt: skip
    return ref


def _outputs_valid(out: Path, names: list[str], reference: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # nothing else, no tmp
    for name in names:
        m = tifffile.imread(out / name)
        ref = tifffile.imread(reference / name.split("_", 1)[1])
        assert m.shape == ref.shape and set(np.unique(m)) <= {0, 1} and m.any()
        np.testing.assert_array_equal(m, ref)


def test_a_worker_killed_mid_segment_leaves_only_complete_outputs(
    cluster, data, reference, tmp_path
):
    address, workers = cluster
    out = tmp_path / "out"
    out.mkdir()
    names = _manifest(data, tmp_path / "seg.jsonl", 2)
    cmd = [*CASAM, "segment", tmp_path / "seg.jsonl", "--out", out, "--library", data / "lib"]
    cmd += ["--cache", data / "cache"]
    run = subprocess.Popen(
        [*map(str, cmd), "--scheduler", address],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = workers[0]
    deadline = time.monotonic() + 300
    while not any(out.glob("*.tif")) and time.monotonic() < deadline:
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)  # mid-item: both workers hold a unit at this point
    victim.wait(timeout=30)
    stdout, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr[-2000:]
    lines = stdout.splitlines()
    assert len(lines) == len(names) and len(set(lines)) == len(names)  # each once, in order
    assert [Path(x.split(":")[0]).name for x in lines] == names
    _outputs_valid(out, names, reference)


def test_resume_after_the_client_was_killed_redoes_only_the_missing(
    cluster, data, reference, tmp_path
):
    address, workers = cluster
    alive = [w for w in workers if w.poll() is None]
    assert alive, "no worker left"
    out = tmp_path / "out"
    out.mkdir()
    names = _manifest(data, tmp_path / "seg.jsonl", 2)
    cmd = [*CASAM, "segment", tmp_path / "seg.jsonl", "--out", out, "--library", data / "lib"]
    cmd += ["--cache", data / "cache"]
    cmd += ["--scheduler", address]
    client = subprocess.Popen(
        list(map(str, cmd)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while len(list(out.glob("*.tif"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=30)
    _wait_idle(address)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    assert 2 <= len(before) < len(names)
    r = casam(*cmd[len(CASAM) :], "--resume")
    kept = [x for x in r.stdout.splitlines() if x.endswith("kept (resumed)")]
    assert sorted(Path(x.split(":")[0]).name for x in kept) == sorted(before)
    assert len(r.stdout.splitlines()) == len(names)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif") if p.name in before} == before
    _outputs_valid(out, names, reference)


def _wait_idle(address: str, timeout: float = 120) -> None:
    """Until no worker runs a task (units of a dead client run to their end, then stop)."""
    from distributed import Client

    quiet = 0
    with Client(address, timeout="10s") as c:
        deadline = time.monotonic() + timeout
        while quiet < 3 and time.monotonic() < deadline:
            busy = c.run(lambda dask_worker: len(dask_worker.state.executing))
            quiet = 0 if any(busy.values()) else quiet + 1
            time.sleep(0.5)
