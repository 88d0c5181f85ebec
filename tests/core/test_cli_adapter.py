"""``casam learn --adapter decoder`` end to end on real MR brain-tumour slices (tests/data) with the
real LiteMedSAM backbone, one short epoch: the task is saved with its kind, listed, routed to,
segments through its own decoder adapters (not plain SAM's masks), keeps its kind when
extended; a bad ``--adapter`` value is argparse's one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from casam.cli import main

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[1] / "data" / "mr_brain_tumour"
NAME = "MR tumour"
SCHEDULE = ["--epochs", "1", "--vae-steps", "20", "--holdout", "0"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _box(mask2d: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask2d)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    import tifffile

    root = tmp_path_factory.mktemp("cli-adapter")
    images, masks = tifffile.imread(DATA / "images.tif"), tifffile.imread(DATA / "masks.tif")
    np.save(root / "images.npy", images[:6])  # 5-fold calibration: at least 5 slices
    np.save(root / "masks.npy", masks[:6])
    np.save(root / "one.npy", images[8])
    common = ["--library", root / "lib", "--cache", root / "cache"]
    code = main(
        [str(a) for a in ("learn", *common, "--name", NAME, "--adapter", "decoder", *SCHEDULE)]
        + ["--images", str(root / "images.npy"), "--masks", str(root / "masks.npy")]
    )
    assert code == 0
    return root, common, masks[8]


def test_the_task_is_saved_listed_and_routed_with_its_kind(learned, capsys):
    root, common, _ = learned
    assert json.loads((root / "lib" / NAME / "task.json").read_text())["adapter"] == "decoder"
    code, out, _ = run(capsys, "tasks", "--library", root / "lib", "--json")
    assert code == 0 and [(t["name"], t["adapter"]) for t in json.loads(out)] == [(NAME, "decoder")]
    code, out, _ = run(capsys, "tasks", "--library", root / "lib")
    assert code == 0 and "decoder" in out.splitlines()[1]
    code, out, _ = run(capsys, "route", *common, "--json", root / "images.npy")
    routes = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and sum(r["task"] == NAME for r in routes) >= 5  # its own training slices


def test_segment_uses_the_decoder_adapters(learned, capsys):
    from casam.predictor import Predictor

    root, common, truth = learned
    box = [str(v) for v in _box(truth)]
    for task in (NAME, "sam"):
        out_png = root / f"{task}.png"
        argv = ("segment", *common, root / "one.npy", "--box", *box, "--task", task)
        code, _, err = run(capsys, *argv, "--out", out_png)
        assert code == 0 and out_png.is_file(), err
    p = Predictor(library=root / "lib", disk_cache=root / "cache")
    p.set_image(np.load(root / "one.npy"))
    own, sam = p.predict([_box(truth)], task=NAME), p.predict([_box(truth)], task="sam")
    assert own.task == NAME and np.abs(own.logits - sam.logits).max() > 1e-2


def test_bad_or_conflicting_adapter_values_are_one_line(learned, capsys):
    root, common, _ = learned
    files = ["--images", root / "images.npy", "--masks", root / "masks.npy"]
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in ("learn", *common, "--name", "x", *files, "--adapter", "prompt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'prompt'" in err and "decoder" in err
    argv = ("learn", *common, "--name", NAME, *files, "--extend", "--adapter", "alignment")
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "decoder adapter" in lines[0] and "--adapter" in err


def test_auto_tries_both_kinds_says_so_and_keeps_the_better(tmp_path, capsys):
    import tifffile

    images, masks = tifffile.imread(DATA / "images.tif"), tifffile.imread(DATA / "masks.tif")
    np.save(tmp_path / "images.npy", images[:8])  # 6 training slices, 2 held out
    np.save(tmp_path / "masks.npy", masks[:8])
    files = ["--images", tmp_path / "images.npy", "--masks", tmp_path / "masks.npy"]
    common = ["--library", tmp_path / "lib", "--cache", tmp_path / "cache"]
    schedule = ["--epochs", "1", "--vae-steps", "20", "--augment", "0", "--holdout", "0.25"]
    # --auto-gain 1: any held-out gain is "little", so decoder adapters are always tried
    argv = ("learn", *common, "--name", "MR auto", *files, *schedule, "--adapter", "auto")
    code, out, err = run(capsys, *argv, "--auto-gain", "1")
    assert code == 0, err
    assert "training decoder adapters too" in err  # the second training's progress lines
    meta = json.loads((tmp_path / "lib" / "MR auto" / "task.json").read_text())
    kinds = meta["settings"]["kind_iou"]
    kept = max(kinds, key=lambda k: (kinds[k], k == "alignment"))
    assert meta["adapter"] == kept and meta["settings"]["auto_gain"] == 1
    assert f"{kept} adapter" in out and "adapter kind chosen on them (alignment 0." in out
