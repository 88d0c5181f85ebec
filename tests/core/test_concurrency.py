"""Several processes writing one library (issue 5): different names all succeed; for the same
name exactly one wins and every other writer gets TaskExistsError. Changes happen under a file
lock, and the name is checked again under that lock just before the rename into place."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from casam_testing import (
    TinyBackbone,
    disk_images,
    one_line,
    router_state,
    save_task,
    snapshot,
    subprocess_env,
    tiny_settings,
    wait_for_line,
)

from casam.errors import TaskExistsError
from casam.library import TaskLibrary

SAVER = textwrap.dedent("""
    import json, os, sys, time
    from casam_testing import save_task
    from casam.errors import TaskExistsError
    from casam.library import TaskLibrary

    root, names, seed, go = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
    lib = TaskLibrary(root)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    for name in names:
        try:
            save_task(lib, name, seed=seed)
            print(json.dumps({"name": name, "won": True}), flush=True)
        except TaskExistsError as e:
            print(json.dumps({"name": name, "won": False, "message": str(e)}), flush=True)
""")

LEARNER = textwrap.dedent("""
    import json, os, sys, time
    from casam_testing import TinyBackbone, disk_images, tiny_settings
    from casam.errors import TaskExistsError
    from casam.library import TaskLibrary
    from casam.predictor import Predictor
    from casam.training import learn_task

    root, names, seed, go = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
    lib = TaskLibrary(root)
    p = Predictor(backbone=TinyBackbone(), library=lib)
    images, masks = disk_images(2, seed=seed)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    for name in names:
        try:
            info = learn_task(
                images, masks, name, library=lib, predictor=p, settings=tiny_settings(seed=seed)
            )
            print(json.dumps({"name": name, "won": True, "n_images": info.n_images}), flush=True)
        except TaskExistsError as e:
            print(json.dumps({"name": name, "won": False, "message": str(e)}), flush=True)
""")


def run_together(tmp_path: Path, script: str, jobs: list[tuple[str, int]], root: Path):
    """Start one process per (names, seed) job; once all are ready they begin at the same moment."""
    f = tmp_path / "worker.py"
    f.write_text(script)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(f), str(root), names, str(seed), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(tmp_path),
        )
        for names, seed in jobs
    ]
    for p in procs:
        line = wait_for_line(p, 300)
        assert line.strip() == "ready", line
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
    return results


def test_two_processes_saving_different_tasks_both_succeed(tmp_path):
    root = tmp_path / "lib"
    TaskLibrary(root)
    a = ",".join(f"a{i}" for i in range(12))
    b = ",".join(f"b{i}" for i in range(12))
    ra, rb = run_together(tmp_path, SAVER, [(a, 1), (b, 2)], root)
    assert all(r["won"] for r in ra + rb) and len(ra) == len(rb) == 12
    lib = TaskLibrary(root)
    assert lib.problems() == []
    assert sorted(lib.names()) == sorted(a.split(",") + b.split(","))
    assert not any(p.name.startswith((".tmp-", ".trash-")) for p in root.iterdir())


def test_two_processes_saving_the_same_names_exactly_one_wins_each(tmp_path):
    root = tmp_path / "lib"
    TaskLibrary(root)
    names = ",".join(f"same{i}" for i in range(12))
    ra, rb = run_together(tmp_path, SAVER, [(names, 1), (names, 2)], root)
    lib = TaskLibrary(root)
    assert lib.problems() == []
    for x, y in zip(ra, rb, strict=True):
        assert x["name"] == y["name"]
        assert x["won"] != y["won"], f"{x['name']}: both or neither won"
        loser = y if x["won"] else x
        assert "already exists" in loser["message"] and "\n" not in loser["message"]
        winner_seed = 1 if x["won"] else 2
        assert torch.equal(
            lib.load(x["name"]).router["features"], router_state(winner_seed)["features"]
        )
    assert sorted(lib.names()) == sorted(names.split(","))


def test_two_processes_learning_into_one_library(tmp_path):
    """Two learners, different names, same moment: both tasks land whole."""
    root = tmp_path / "lib"
    TaskLibrary(root)
    ra, rb = run_together(tmp_path, LEARNER, [("mine-a", 1), ("mine-b", 2)], root)
    assert ra == [{"name": "mine-a", "won": True, "n_images": 2}]
    assert rb == [{"name": "mine-b", "won": True, "n_images": 2}]
    lib = TaskLibrary(root)
    assert lib.problems() == [] and lib.names() == ["mine-a", "mine-b"]
    assert not any(p.name.startswith((".tmp-", ".trash-")) for p in root.iterdir())


def test_name_taken_while_learning_is_refused_at_commit(tmp_path):
    """The early check passes, then another writer takes the name: the re-check under the lock
    refuses the late one with TaskExistsError, and the first task is untouched."""
    from casam.predictor import Predictor
    from casam.training import iter_learn_task

    lib = TaskLibrary(tmp_path / "lib")
    other = TaskLibrary(tmp_path / "lib")
    p = Predictor(backbone=TinyBackbone(), library=lib)
    images, masks = disk_images(2)
    gen = iter_learn_task(images, masks, "X", library=lib, predictor=p, settings=tiny_settings())
    progress = next(gen)  # past the early name check, embedding
    assert progress.stage == "embed"
    save_task(other, "X", seed=42)
    before = snapshot(lib.root)
    with pytest.raises(TaskExistsError) as e:
        for _ in gen:
            pass
    assert "'X' already exists" in one_line(e.value)
    assert snapshot(lib.root) == before
    assert torch.equal(lib.load("X").router["features"], router_state(42)["features"])
    assert not any(q.name.startswith(".tmp-") for q in lib.root.iterdir())


def test_threads_saving_the_same_name(tmp_path):
    """Within one process too (each TaskLibrary takes its own lock handle)."""
    root = tmp_path / "lib"
    results: list[str] = []
    barrier = threading.Barrier(4)

    def work(seed):
        lib = TaskLibrary(root)
        barrier.wait()
        try:
            save_task(lib, "T", seed=seed)
            results.append("won")
        except TaskExistsError:
            results.append("exists")

    TaskLibrary(root)
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["exists"] * 3 + ["won"]
    assert TaskLibrary(root).problems() == []
