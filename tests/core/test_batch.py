"""Batch mechanics without a model: manifests, units, outputs, resume, ordering, aggregation."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from casam.batch import (
    Outcome,
    Unit,
    collect,
    eval_summary,
    leftover_tmp,
    merge_eval,
    read_manifest,
    run_unit,
    with_outputs,
)
from casam.errors import InputError
from casam.runner import Progress, in_order, parse_scheduler, remove_leftovers, run_serial


class FakePredictor:
    """Embeds to the image mean; routes to 'bright' above 100; masks = pixels inside the box."""

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, img):
        self.embedded += 1
        return SimpleNamespace(mean=float(np.mean(img)), shape=img.shape[:2])

    def is_cached(self, img) -> bool:
        return False

    def route_embedding(self, e):
        task = "bright" if e.mean > 100 else None
        return SimpleNamespace(to_json=lambda name: {"image": name, "task": task}, task=task)

    def predict_embedding(self, e, boxes, task="auto"):
        b = np.asarray(boxes, float).reshape(-1, 4)
        masks = np.zeros((len(b), *e.shape), bool)
        for m, (x0, y0, x1, y1) in zip(masks, b.astype(int), strict=True):
            m[y0:y1, x0:x1] = True
        return SimpleNamespace(masks=masks, task="bright" if e.mean > 100 else None)


@pytest.fixture
def files(tmp_path):
    img = np.zeros((40, 40), np.uint8)
    img[:, :20] = 200
    np.save(tmp_path / "a.npy", img)
    np.save(tmp_path / "b.npy", img // 4)
    vol = np.stack([img, img // 4, img])
    np.save(tmp_path / "vol.npy", vol)
    msk = np.zeros((40, 40), np.uint8)
    msk[5:15, 10:30] = 1
    np.save(tmp_path / "ma.npy", msk)
    np.save(tmp_path / "mb.npy", msk)
    mvol = np.stack([msk, np.zeros_like(msk), msk])
    np.save(tmp_path / "mvol.npy", mvol)
    (tmp_path / "out").mkdir()
    return tmp_path


def test_manifests_csv_and_jsonl_resolve_relative_paths(files):
    (files / "m.csv").write_text(
        'image,mask,boxes,slice\na.npy,ma.npy,"[[1, 2, 3, 4]]",\nb.npy,,,0\n'
    )
    rows = read_manifest(files / "m.csv")
    assert rows[0] == {
        "image": str(files / "a.npy"),
        "mask": str(files / "ma.npy"),
        "boxes": ((1.0, 2.0, 3.0, 4.0),),
        "slice": None,
    }
    assert rows[1]["mask"] is None and rows[1]["slice"] == 0
    (files / "m.jsonl").write_text(
        json.dumps({"image": "a.npy", "boxes": [[0, 0, 5, 5], [1, 1, 2, 2]]}) + "\n\n"
    )
    units = collect([files / "m.jsonl", files / "b.npy"])
    assert [u.index for u in units] == [0, 1]
    assert units[0].boxes == ((0, 0, 5, 5), (1, 1, 2, 2)) and units[1].image == str(files / "b.npy")


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"mask": "ma.npy"}\n', "m.jsonl:1: no 'image'"),
        ('{"image": "a.npy", "boxes": "oops"}\n', "boxes must be a JSON list"),
        ('{"image": "a.npy", "slice": "x"}\n', "slice must be a whole number"),
        ("[1, 2]\n", "must be a JSON object"),
        ("{not json\n", "not a JSON object"),
        ("\n", "lists no inputs"),
    ],
)
def test_bad_manifests_say_which_line(files, text, needle):
    (files / "m.jsonl").write_text(text)
    with pytest.raises(InputError, match=needle.replace("(", r"\(")):
        read_manifest(files / "m.jsonl")


def test_masks_pair_by_order_and_counts_must_match(files):
    units = collect([files / "a.npy", files / "b.npy"], [files / "ma.npy", files / "mb.npy"])
    assert [u.mask for u in units] == [str(files / "ma.npy"), str(files / "mb.npy")]
    with pytest.raises(InputError, match="2 image files but 1 mask files"):
        collect([files / "a.npy", files / "b.npy"], [files / "ma.npy"])


def test_outputs_are_one_per_input_and_never_shared(files):
    units = with_outputs(collect([files / "a.npy", files / "vol.npy"]), files / "out")
    assert [u.out for u in units] == [str(files / "out/a.tif"), str(files / "out/vol.tif")]
    (files / "sub").mkdir()
    np.save(files / "sub" / "a.npy", np.zeros((4, 4)))
    with pytest.raises(InputError, match="would both write"):
        with_outputs(collect([files / "a.npy", files / "sub/a.npy"]), files / "out")
    with pytest.raises(InputError, match="does not exist"):
        with_outputs(units, files / "nowhere")


def test_route_lines_match_the_serial_format(files):
    p = FakePredictor()
    o = run_unit(p, "route", Unit(0, str(files / "vol.npy")), {"json": True})
    assert [json.loads(x)["image"] for x in o.lines] == [
        f"{files / 'vol.npy'}[{k}]" for k in range(3)
    ]
    assert [json.loads(x)["task"] for x in o.lines] == [None, None, None]  # vol mean is low


def test_segment_volume_writes_one_stack_atomically_and_resume_keeps_it(files):
    p = FakePredictor()
    u = with_outputs([Unit(0, str(files / "vol.npy"), str(files / "mvol.npy"))], files / "out")[0]
    o = run_unit(p, "segment", u, {"task": "auto"})
    assert o.ok and not o.resumed
    m = tifffile.imread(u.out)
    assert m.shape == (3, 40, 40) and m[1].sum() == 0 and m[0].sum() == 10 * 20
    assert not leftover_tmp(u.out)
    n = p.embedded
    again = run_unit(p, "segment", u, {"task": "auto", "resume": True})
    assert again.resumed and p.embedded == n  # nothing recomputed
    tifffile.imwrite(u.out, np.zeros((2, 40, 40), np.uint8))  # wrong shape: does not verify
    redo = run_unit(p, "segment", u, {"task": "auto", "resume": True})
    assert not redo.resumed and tifffile.imread(u.out).shape == (3, 40, 40)


def test_a_bad_input_becomes_its_own_one_line_error(files):
    (files / "bad.png").write_bytes(b"junk")
    units = with_outputs(collect([files / "a.npy", files / "bad.png"]), files / "out")
    outs = list(run_serial(FakePredictor(), "segment", units, {"boxes": [[0, 0, 10, 10]]}))
    assert outs[0].ok and not outs[1].ok
    assert "cannot read" in outs[1].error and "\n" not in outs[1].error
    no_box = run_unit(FakePredictor(), "segment", units[0], {})
    assert "no box given" in no_box.error


def test_leftover_temporaries_of_a_dead_writer_are_removed(files):
    units = with_outputs(collect([files / "a.npy"]), files / "out")
    dead = files / "out" / ".a.tif.12345.tmp.tif"
    dead.write_bytes(b"half")
    other = files / "out" / "b.tif"
    other.write_bytes(b"someone else's")
    assert leftover_tmp(units[0].out) == [dead]
    assert remove_leftovers(units) == 1 and not dead.exists() and other.exists()


def test_eval_merges_like_the_serial_aggregation():
    rng = np.random.default_rng(0)
    parts = [list(rng.random(k)) for k in (3, 1, 4)]
    outs = [
        Outcome(i, f"x{i}", data={"iou": p, "biou": p[::-1], "tasks": ["a"] * len(p), "skipped": 1})
        for i, p in enumerate(parts)
    ]
    outs.append(Outcome(3, "bad", error="broken"))
    flat = [x for p in parts for x in p]
    flat_b = [x for p in parts for x in p[::-1]]
    assert merge_eval(outs[::-1]) == eval_summary(flat, flat_b, ["a"] * 8, 3)
    result, text = merge_eval(outs)
    assert result["n_images"] == 8 and result["iou"] == float(np.mean(flat))
    assert text.startswith("8 slices (3 empty skipped)")
    with pytest.raises(InputError, match="nothing to evaluate"):
        merge_eval([outs[3]])


def test_in_order_releases_each_outcome_as_soon_as_its_turn_comes():
    arrivals = [(2, "c"), (0, "a"), (1, "b"), (3, "d")]
    seen = []

    def gen():
        for pos, x in arrivals:
            seen.append(pos)
            yield pos, x

    got = []
    for x in in_order(gen(), 4):
        got.append((x, list(seen)))
    assert [g[0] for g in got] == ["a", "b", "c", "d"]
    assert got[0][1] == [2, 0]  # 'a' was released before 'b' arrived
    with pytest.raises(RuntimeError, match="only 1 of 2"):
        list(in_order(iter([(0, "a")]), 2))


def test_progress_reports_done_failed_rate_and_eta():
    out = io.StringIO()
    pr = Progress(4, out, every=0.0, start=0.0)
    pr.update(True)
    pr.update(False)
    line = pr.line(now=pr.start + 2.0)
    assert line == "casam: 2/4 done, 1 failed, 1.00 inputs/s, ETA 2 s"
    assert out.getvalue().count("\n") == 2


@pytest.mark.parametrize(
    "spec, parsed",
    [("local", ("local", 1)), ("local:3", ("local", 3)), ("tcp://h:1", ("tcp://h:1", None))],
)
def test_scheduler_specs(spec, parsed, monkeypatch):
    monkeypatch.setattr("casam.runner.cpu_count", lambda: 2)
    assert parse_scheduler(spec) == parsed


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["route", "{d}/a.npy", "--scheduler", "local:0"], "local:N must be a whole number"),
        (["route", "{d}/a.npy", "--scheduler", "http://x"], "give local, local:N or tcp://"),
        (["segment", "{d}/a.npy", "{d}/b.npy", "--out", "{d}/none"], "folder"),
        (["eval", "--images", "{d}/m.jsonl", "--scheduler", "local"], "--masks"),
    ],
)
def test_batch_usage_errors_are_one_line_exit_2(files, capsys, argv, needle):
    from casam.cli import main

    (files / "m.jsonl").write_text('{"image": "a.npy"}\n')
    code = main([a.format(d=files) for a in argv] + ["--library", str(files / "lib")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
