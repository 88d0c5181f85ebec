"""Task format 2 (pooled views + neighbour threshold) and ``casam recalibrate``: thresholds
recomputed from a task's stored features, for a task of format 1 too; bad names change nothing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from casam_testing import (
    TinyBackbone,
    disk_images,
    make_info,
    one_line,
    router_state,
    save_task,
    snapshot,
    tiny_settings,
)

from casam.cli import main
from casam.errors import LibraryError
from casam.library import TaskLibrary
from casam.library import format as fmt
from casam.library.format import META, parse_meta
from casam.neighbours import calibrate
from casam.predictor import Predictor
from casam.task_tensors import VIEW_KEYS, stored_views
from casam.training import learn_task

OLD = Path(__file__).resolve().parents[1] / "data" / "library-f66560d"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def old_root(tmp_path) -> Path:
    """A library written by the engine before task format 2 (attention-pooled features only)."""
    root = tmp_path / "old"
    shutil.copytree(OLD / "library", root)
    return root


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Path:
    """A library with one task learned today (format 2), by the tiny backbone."""
    root = tmp_path_factory.mktemp("learned") / "lib"
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(root))
    images, masks = disk_images(4, seed=0)
    learn_task(images, masks, "disks", predictor=p, settings=tiny_settings(seed=0))
    return root


def test_a_task_learned_now_stores_every_view_and_its_neighbour_threshold(learned):
    lib = TaskLibrary(learned)
    task = lib.load("disks")
    assert task.info.format_version == 2 and all(k in task.router for k in VIEW_KEYS)
    views = stored_views(task.router)
    assert views.shape == (4, 3, 256)
    assert task.info.settings["knn_k"] == 1
    assert task.info.knn_threshold == pytest.approx(calibrate(views, 2.0, k=1), rel=1e-6)
    p = Predictor(backbone=TinyBackbone(), library=lib)
    assert p.neighbours.n_views == [3] and p.neighbours.ks == [1]
    images, _ = disk_images(3, seed=7)
    assert [p.route_embedding(p.embed(im)).task for im in images] == ["disks"] * 3
    noise = np.random.default_rng(0).normal(0, 1000, (64, 64)).astype(np.int16)
    assert p.route_embedding(p.embed(noise)).fallback


def test_recalibrate_an_old_task_gives_it_a_neighbour_threshold(capsys, old_root):
    before = snapshot(old_root)
    routes_before = _routes(old_root)
    code, out, err = run(capsys, "recalibrate", "--library", old_root)
    assert code == 0, err
    (line,) = out.splitlines()
    assert line.startswith("task 'tiny disks': neighbour threshold - -> ")
    assert "format 1 -> 2" in line and "VAE threshold" in line
    after = snapshot(old_root)
    weights = ("alignment.safetensors", "router.safetensors")
    for f in weights:  # the weights are kept byte for byte
        assert after[f"tiny disks/{f}"] == before[f"tiny disks/{f}"]
    meta = json.loads(after[f"tiny disks/{META}"])
    assert meta["format_version"] == 2 and meta["knn_threshold"] > 0
    task = TaskLibrary(old_root).load("tiny disks")
    assert task.info.knn_threshold == pytest.approx(calibrate(stored_views(task.router)))
    assert _routes(old_root) == routes_before  # the same threshold it got when loaded


def test_recalibrate_json_says_what_changed_and_is_idempotent(capsys, learned, tmp_path):
    root = tmp_path / "lib"
    shutil.copytree(learned, root)
    old = TaskLibrary(root).info("disks")
    code, out, _ = run(capsys, "recalibrate", "--library", root, "--task", "disks", "--json")
    assert code == 0
    row = json.loads(out)
    assert row["task"] == "disks" and row["format_version"] == [2, 2]
    assert row["knn_threshold"][0] == pytest.approx(row["knn_threshold"][1], rel=1e-6)
    assert row["threshold"][0] == old.threshold
    assert row["threshold"][1] == pytest.approx(old.threshold, rel=1e-3)  # same folds, same seed


def test_a_task_learned_with_knn_k_2_routes_and_recalibrates_with_it(capsys, tmp_path):
    """``knn_k`` is the task's own: stored in its settings, used by the bank, kept by
    recalibrate; a task whose settings lack it (learned before it existed) is scored with 1."""
    root = tmp_path / "lib"
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(root))
    images, masks = disk_images(4, seed=0)
    learn_task(images, masks, "disks", predictor=p, settings=tiny_settings(seed=0, knn_k=2))
    lib = TaskLibrary(root)
    task = lib.load("disks")
    views = stored_views(task.router)
    assert task.info.knn_threshold == pytest.approx(calibrate(views, 2.0, k=2), rel=1e-6)
    p.reload_library()
    assert p.neighbours.ks == [2]
    probes, _ = disk_images(3, seed=7)
    assert [p.route_embedding(p.embed(im)).task for im in probes] == ["disks"] * 3
    code, _, err = run(capsys, "recalibrate", "--library", root, "--task", "disks")
    assert code == 0, err
    new = TaskLibrary(root).info("disks")
    assert new.settings["knn_k"] == 2
    assert new.knn_threshold == pytest.approx(task.info.knn_threshold, rel=1e-6)
    settings = {k: v for k, v in task.info.settings.items() if k != "knn_k"}
    lib.save(task.info.with_(settings=settings), task.alignment, task.router, overwrite=True)
    p.reload_library()
    assert p.neighbours.ks == [1]


@pytest.mark.parametrize("name, needle", [("nope", "no task named 'nope'"), ("../x", "x")])
def test_recalibrate_a_bad_or_missing_task_changes_nothing(capsys, old_root, name, needle):
    before = snapshot(old_root)
    code, out, err = run(
        capsys, "recalibrate", "--library", old_root, "--task", "tiny disks", "--task", name
    )
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("casam") and needle in lines[0]
    assert "Traceback" not in err
    assert snapshot(old_root) == before  # the good task named first is not touched either


def test_recalibrate_a_missing_library_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "recalibrate", "--library", tmp_path / "none")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err


def test_a_reader_of_format_1_refuses_a_format_2_task_clearly(learned, monkeypatch):
    raw = (learned / "disks" / META).read_bytes()
    monkeypatch.setattr(fmt, "TASK_FORMAT_VERSION", 1)
    with pytest.raises(LibraryError) as e:
        parse_meta(raw, "task 'disks'")
    msg = one_line(e.value)
    assert "newer napari-casam" in msg and "format 2" in msg and "upgrade" in msg


def test_mismatched_or_partial_views_and_wild_neighbour_thresholds_are_refused(tmp_path):
    lib = TaskLibrary(tmp_path / "lib")
    from casam_testing import alignment_state

    good = router_state(n=6)
    partial = {**good, "features_std": torch.rand(6, 256)}
    short = {**partial, "features_max": torch.rand(5, 256)}
    for i, router in enumerate((partial, short)):
        with pytest.raises(LibraryError) as e:
            lib.save(make_info(f"bad{i}"), alignment_state(), router)
        assert "features_max" in one_line(e.value) or "features_std" in one_line(e.value)
    for knn in (0.9, float("inf")):
        with pytest.raises(LibraryError) as e:
            lib.save(make_info("wild", knn_threshold=knn), alignment_state(), good)
        assert "neighbour threshold" in one_line(e.value)
    save_task(lib, "fine")
    assert lib.names() == ["fine"]


def _routes(root: Path) -> list:
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(root))
    return [
        (r.task, round(r.ratio, 6))
        for r in (p.route_embedding(p.embed(im)) for im in np.load(OLD / "probes.npy"))
    ]


def test_a_task_learned_before_the_floor_routes_without_it_until_recalibrated(capsys, tmp_path):
    """``knn_floor`` and ``knn_separation`` are the task's own: a task whose settings lack them
    (learned before they existed) keeps its old routing; ``casam recalibrate`` writes this
    release's defaults into them."""
    from casam.config import LearnSettings

    root = tmp_path / "lib"
    p = Predictor(backbone=TinyBackbone(), library=TaskLibrary(root))
    images, masks = disk_images(4, seed=0)
    learn_task(images, masks, "disks", predictor=p, settings=tiny_settings(seed=0))
    lib = TaskLibrary(root)
    task = lib.load("disks")
    d = LearnSettings()
    assert task.info.settings["knn_floor"] == d.knn_floor
    assert task.info.settings["knn_separation"] == d.knn_separation
    p.reload_library()
    assert p.neighbours.thresholds.tolist() == pytest.approx(
        [max(task.info.knn_threshold, d.knn_floor)]
    )
    old = {k: v for k, v in task.info.settings.items() if k not in ("knn_floor", "knn_separation")}
    lib.save(task.info.with_(settings=old), task.alignment, task.router, overwrite=True)
    p.reload_library()
    assert p.neighbours.thresholds.tolist() == pytest.approx([task.info.knn_threshold])
    assert p.neighbours.own == pytest.approx([task.info.knn_threshold])
    code, _, err = run(capsys, "recalibrate", "--library", root, "--task", "disks")
    assert code == 0, err
    new = TaskLibrary(root).info("disks")
    assert new.settings["knn_floor"] == d.knn_floor
    assert new.settings["knn_separation"] == d.knn_separation
