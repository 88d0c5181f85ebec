"""A library written by the engine before the architecture refactor (commit f66560d, see
tests/data/library-f66560d/make_library.py) loads and routes identically today."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from casam_testing import TinyBackbone

from casam.library import TaskLibrary
from casam.predictor import Predictor

DATA = Path(__file__).resolve().parents[1] / "data" / "library-f66560d"


@pytest.fixture
def old_library(tmp_path) -> TaskLibrary:
    root = tmp_path / "library"
    shutil.copytree(DATA / "library", root)
    return TaskLibrary(root, create=False)


def test_old_library_loads_whole(old_library):
    assert old_library.names() == ["tiny disks"] and old_library.problems() == []
    task = old_library.load("tiny disks")
    assert task.info.blocks == 1 and task.info.backbone == TinyBackbone().identity


def test_old_library_routes_and_segments_identically(old_library):
    p = Predictor(backbone=TinyBackbone(), library=old_library, router="paper")
    assert p.task_names == ["tiny disks"] and p.problems == []
    probes = np.load(DATA / "probes.npy")
    expected = json.loads((DATA / "routes.json").read_text())
    for image, want in zip(probes, expected, strict=True):
        r = p.route_embedding(p.embed(image))
        assert (r.task, r.fallback) == (want["task"], want["fallback"])
        # rel 1e-4: float sums differ with the thread count (2e-5 seen at one thread); a
        # changed score formula or loaded weight moves it by far more
        assert r.score == pytest.approx(want["score"], rel=1e-4)
        assert r.threshold == pytest.approx(want["threshold"], rel=1e-9)
    assert [w["fallback"] for w in expected] == [False, False, False, True]  # both outcomes
    mask = p.predict_embedding(p.embed(probes[0]), [[16, 16, 48, 48]], task="tiny disks").masks[0]
    old = np.load(DATA / "mask.npy")
    assert (mask & old).sum() / (mask | old).sum() > 0.99


def test_old_task_routes_with_the_default_router_on_its_one_view(old_library):
    """A task of format 1 stored attention-pooled features only: the default (kNN) router scores
    it on that view with a threshold computed from them, and routes the probes as the paper's
    rule did (3 disks to the task, the noise image to SAM)."""
    p = Predictor(backbone=TinyBackbone(), library=old_library)
    assert p.router == "knn" and p.neighbours.n_views == [1]
    info = old_library.info("tiny disks")
    assert info.format_version == 1 and info.knn_threshold is None
    probes = np.load(DATA / "probes.npy")
    expected = json.loads((DATA / "routes.json").read_text())
    for image, want in zip(probes, expected, strict=True):
        r = p.route_embedding(p.embed(image))
        assert (r.task, r.fallback, r.router) == (want["task"], want["fallback"], "knn")
        assert (r.ratio <= 1) != r.fallback
