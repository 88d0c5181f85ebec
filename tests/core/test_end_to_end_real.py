"""End to end on real medical slices (tests/data, see PROVENANCE.md), through the `casam` CLI.

Two tasks of different modalities are learned (MR brain tumour, CT spleen). Then:
(a) each task's held-out slices route to it, (b) kinds of image never learned (X-ray,
ultrasound, fundus, photographs, microscopy) fall back to plain SAM, and (c) the learned layer
beats plain SAM's IoU on its held-out slices by a clear margin. A small schedule keeps this
within CI's budget; full-schedule figures are in the README.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from casam.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
TASKS = {"MR brain tumour": "mr_brain_tumour", "CT spleen": "ct_spleen"}
SCHEDULE = ["--epochs", "4", "--vae-steps", "400"]

pytestmark = pytest.mark.slow


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Every 5th slice of each structure is a test slice; the rest are for learning."""
    root = tmp_path_factory.mktemp("real")
    out = {}
    for name, folder in TASKS.items():
        img = tifffile.imread(DATA / folder / "images.tif")
        msk = tifffile.imread(DATA / folder / "masks.tif")
        test = np.arange(len(img)) % 5 == 2
        paths = {}
        for part, sel in (("train", ~test), ("test", test)):
            d = root / folder / part
            d.mkdir(parents=True)
            np.save(d / "images.npy", img[sel])
            np.save(d / "masks.npy", msk[sel])
            paths[part] = d
        out[name] = paths
    return root, out


@pytest.fixture(scope="module")
def library(split, tmp_path_factory):
    root, parts = split
    lib = tmp_path_factory.mktemp("lib")
    cache = root / "embeddings"
    summaries = {}
    for name, p in parts.items():
        code = main(
            [
                "learn",
                "--library",
                str(lib),
                "--cache",
                str(cache),
                "--name",
                name,
                "--images",
                str(p["train"] / "images.npy"),
                "--masks",
                str(p["train"] / "masks.npy"),
                *SCHEDULE,
            ]
        )
        assert code == 0
        summaries[name] = json.loads((lib / name / "task.json").read_text())
    return lib, cache, summaries


def test_learned_tasks_are_listed(library, capsys):
    lib, _, summaries = library
    code, out, _ = run(capsys, "tasks", "--library", lib, "--json")
    assert code == 0
    listed = {t["name"]: t for t in json.loads(out)}
    assert set(listed) == set(TASKS)
    for name, t in listed.items():
        assert t["active"] and t["backbone"].startswith("litemedsam:")
        assert t["n_images"] >= 15 and 0 < t["threshold"] < 1
        assert t["iou_task"] > t["iou_sam"], (name, t["iou_sam"], t["iou_task"])


@pytest.mark.parametrize("name", list(TASKS))
def test_heldout_slices_route_to_their_task_and_beat_sam(library, split, capsys, name):
    lib, cache, _ = library
    test = split[1][name]["test"]
    common = [
        "--library",
        lib,
        "--cache",
        cache,
        "--images",
        test / "images.npy",
        "--masks",
        test / "masks.npy",
        "--json",
    ]
    code, out, _ = run(capsys, "eval", *common, "--task", "auto")
    assert code == 0
    auto = json.loads(out)
    code, out, _ = run(capsys, "eval", *common, "--task", "sam")
    sam = json.loads(out)
    assert auto["n_images"] == sam["n_images"] >= 5
    assert auto["routed"] == {name: auto["n_images"]}, auto["routed"]
    assert sam["routed"] == {"sam": sam["n_images"]}
    # (c) a clear margin over plain SAM on slices it never saw
    assert auto["iou"] >= sam["iou"] + 0.05, (auto, sam)
    assert auto["biou"] > sam["biou"]


def test_unlearned_kinds_fall_back_to_sam(library, capsys):
    lib, cache, _ = library
    code, out, _ = run(capsys, "route", "--library", lib, "--cache", cache, "--json", DATA / "ood")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    kinds = {Path(r["image"]).name.split("_")[0] for r in rows}
    assert {"xray", "ultrasound", "fundus", "photo"} <= kinds
    for r in rows:
        assert r["fallback"] is True and r["task"] is None, r
        assert r["score"] > r["threshold"]


def test_segment_writes_the_routed_mask(library, split, capsys, tmp_path):
    lib, cache, _ = library
    test = split[1]["CT spleen"]["test"]
    img, msk = np.load(test / "images.npy")[0], np.load(test / "masks.npy")[0]
    np.save(tmp_path / "slice.npy", img)
    ys, xs = np.nonzero(msk)
    box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    code, out, _ = run(
        capsys,
        "segment",
        "--library",
        lib,
        "--cache",
        cache,
        tmp_path / "slice.npy",
        "--box",
        *box,
        "--out",
        tmp_path / "mask.png",
    )
    assert code == 0 and "CT spleen" in out
    from casam.io import read_slices
    from casam.metrics import iou

    (mask,) = read_slices(tmp_path / "mask.png")
    assert mask.shape == msk.shape and iou(mask > 0, msk > 0) > 0.6
