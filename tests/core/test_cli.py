"""The `casam` command line: usage and input errors are one line on stderr, exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from casam.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("casam") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def files(tmp_path):
    img = (np.arange(6 * 40 * 40) % 255).reshape(6, 40, 40).astype(np.uint16)
    msk = np.zeros((6, 40, 40), np.uint8)
    msk[:, 10:20, 10:25] = 1
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "msk.npy", msk)
    np.save(tmp_path / "short.npy", msk[:4])
    np.save(tmp_path / "empty.npy", np.zeros_like(msk))
    np.save(tmp_path / "one.npy", img[0])
    from casam.library import TaskLibrary

    TaskLibrary(tmp_path / "lib")
    return tmp_path


def test_usage_errors(capsys, files):
    with pytest.raises(SystemExit) as e:
        main(["learn", "--library", str(files / "lib")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--name" in err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (
            ["learn", "--name", "x", "--images", "{d}/img.npy", "--masks", "{d}/short.npy"],
            ["6 slices", "short.npy"],
        ),
        (
            ["learn", "--name", "x", "--images", "{d}/img.npy", "--masks", "{d}/missing.npy"],
            ["--masks", "missing.npy"],
        ),
        (
            ["learn", "--name", "../evil", "--images", "{d}/img.npy", "--masks", "{d}/msk.npy"],
            ["task name"],
        ),
        (
            ["learn", "--name", "x", "--images", "{d}/img.npy", "--masks", "{d}/empty.npy"],
            ["empty"],
        ),
        (
            [
                "learn",
                "--name",
                "x",
                "--images",
                "{d}/img.npy",
                "{d}/one.npy",
                "--masks",
                "{d}/msk.npy",
            ],
            ["2 image files but 1"],
        ),
        (["eval", "--images", "{d}/img.npy", "--masks", "{d}/empty.npy"], ["empty"]),
        (
            ["segment", "{d}/img.npy", "--box", "1", "1", "5", "5", "--out", "{d}/o.png"],
            ["--slice"],
        ),
        (
            [
                "segment",
                "{d}/img.npy",
                "--slice",
                "9",
                "--box",
                "1",
                "1",
                "5",
                "5",
                "--out",
                "{d}/o.png",
            ],
            ["out of range"],
        ),
        (["route", "{d}/nothing.png"], ["nothing.png", "does not exist"]),
        (["tasks", "--library", "{d}/nolib"], ["does not exist"]),
        (["remove", "--library", "{d}/lib", "ghost"], ["ghost"]),
        (
            [
                "learn",
                "--backbone",
                "sam_vit_b",
                "--name",
                "x",
                "--images",
                "{d}/img.npy",
                "--masks",
                "{d}/msk.npy",
            ],
            ["--checkpoint"],
        ),
        (
            [
                "learn",
                "--name",
                "x",
                "--images",
                "{d}/img.npy",
                "--masks",
                "{d}/msk.npy",
                "--threshold-margin",
                "0",
            ],
            ["--threshold-margin", "(0, 10]"],
        ),
        (["route", "{d}/img.npy", "--device", "tpu9"], ["unknown device", "option --device"]),
    ],
)
def test_input_errors_without_the_model(capsys, files, argv, needles):
    argv = [a.format(d=files) for a in argv]
    if "--library" not in argv and argv[0] != "route":
        argv += ["--library", str(files / "lib")]
    if argv[0] == "route":
        argv += ["--library", str(files / "lib")]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *needles)


def test_too_few_slices_for_calibration(capsys, files):
    np.save(files / "few.npy", np.load(files / "msk.npy")[:3])
    np.save(files / "fewimg.npy", np.load(files / "img.npy")[:3])
    code, _, err = run(
        capsys,
        "learn",
        "--library",
        files / "lib",
        "--name",
        "x",
        "--images",
        files / "fewimg.npy",
        "--masks",
        files / "few.npy",
    )
    assert_one_line_error(code, err, "at least 5")
    assert not any((files / "lib").iterdir()) or [
        p.name for p in (files / "lib").iterdir() if not p.name.startswith(".")
    ] == ["casam-library.json"]


def test_bad_boxes_and_images_through_segment(capsys, files):
    for box, needle in [
        (["30", "30", "10", "10"], "inverted"),
        (["100", "100", "120", "130"], "outside"),
        (["5", "5", "5", "9"], "zero area"),
    ]:
        code, _, err = run(
            capsys,
            "segment",
            "--library",
            files / "lib",
            files / "one.npy",
            "--box",
            *box,
            "--out",
            files / "o.png",
        )
        assert_one_line_error(code, err, needle)
    np.save(files / "const.npy", np.full((30, 30), 3, np.int16))
    code, _, err = run(
        capsys,
        "segment",
        "--library",
        files / "lib",
        files / "const.npy",
        "--box",
        "1",
        "1",
        "9",
        "9",
        "--out",
        files / "o.png",
    )
    assert_one_line_error(code, err, "constant")
    assert not (files / "o.png").exists()


def test_route_json_on_empty_library(capsys, files):
    code, out, _ = run(capsys, "route", "--library", files / "lib", "--json", files / "one.npy")
    assert code == 0
    assert json.loads(out) == {
        "image": str(files / "one.npy"),
        "task": None,
        "score": None,
        "threshold": None,
        "fallback": True,
        "router": "knn",
        "best": None,
        "ratio": None,
        "runner_up": None,
        "runner_up_ratio": None,
        "reason": "no task learned for this model yet",
        "ambiguous": False,
    }


def test_console_script_runs_in_a_fresh_process(files):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "casam.cli",
            "route",
            "--library",
            str(files / "lib"),
            str(files / "x.jpg"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "x.jpg" in r.stderr and "Traceback" not in r.stderr


def test_importing_casam_loads_no_gui():
    code = (
        "import sys, casam, casam.predictor, casam.training, casam.cli, casam.library\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', "
        "'PySide2', 'PySide6', 'magicgui', 'napari_casam')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_importing_casam_is_lazy():
    r = subprocess.run(
        [sys.executable, "-c", "import sys, casam; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.stdout.strip() == "False"


def test_engine_errors_get_the_cli_option_that_fixes_them():
    from casam.cli import error_line
    from casam.errors import CheckpointError, TaskExistsError

    taken = TaskExistsError("task 'X' already exists in /lib; choose another name")
    line = error_line(taken, "learn")
    assert line.startswith("casam: error: task 'X' already exists")
    assert "--overwrite" in line and "--extend" in line
    assert "--name" in error_line(taken, "import") and "--extend" not in error_line(taken, "import")
    assert error_line(CheckpointError("needs a checkpoint", subject="checkpoint")).endswith(
        "(option --checkpoint PATH)"
    )
    assert error_line(CheckpointError("unreadable")) == "casam: error: unreadable"


def test_tasks_lists_from_metadata_without_building_a_model(capsys, tmp_path, monkeypatch):
    from casam_testing import save_task

    import casam.sam
    from casam.library import TaskLibrary

    def no_model(*a, **k):
        raise AssertionError("casam tasks built a model")

    monkeypatch.setattr(casam.sam.Backbone, "__init__", no_model)
    lib = TaskLibrary(tmp_path / "lib")
    save_task(lib, "A")
    (lib.root / "A" / "stray.pkl").write_bytes(b"x")
    save_task(lib, "B")
    code, out, err = run(capsys, "tasks", "--library", lib.root)
    assert code == 0 and "B" in out and err == ""
    code, out, err = run(capsys, "tasks", "--library", lib.root, "--verify")
    assert code == 0 and "stray.pkl" in err


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--box", "50", "50", "60", "60", "--out", "{d}/o.png"], ["outside"]),
        (["--box", "20", "20", "5", "5", "--out", "{d}/o.png"], ["inverted"]),
        (["--box", "1", "1", "5", "5", "--out", "{d}/o.bmp"], ["--out", ".bmp"]),
        (["--box", "1", "1", "5", "5", "--out", "{d}/o.png", "--task", "ghost"], ["ghost"]),
    ],
)
def test_segment_refuses_bad_input_before_building_a_model(
    capsys, files, monkeypatch, extra, needles
):
    import casam.sam

    def no_model(*a, **k):
        raise AssertionError("a model was built before the input was checked")

    monkeypatch.setattr(casam.sam.Backbone, "__init__", no_model)
    argv = ["segment", str(files / "one.npy"), "--library", str(files / "lib")]
    code, _, err = run(capsys, *argv, *[a.format(d=files) for a in extra])
    assert_one_line_error(code, err, *needles)


def test_learn_takes_the_augmented_copies_option_and_the_paper_has_none():
    from casam.cli.commands import _learn_settings
    from casam.cli.parser import build_parser
    from casam.config import LearnSettings

    base = ["learn", "--name", "T", "--images", "i.npy", "--masks", "m.npy"]
    parse = build_parser().parse_args
    assert _learn_settings(parse(base)).augment == LearnSettings().augment == 2
    assert _learn_settings(parse([*base, "--augment", "0"])).augment == 0
    assert _learn_settings(parse([*base, "--augment", "3", "--epochs", "2"])).to_dict() == {
        **LearnSettings().to_dict(),
        "augment": 3,
        "epochs": 2,
    }
    assert _learn_settings(parse([*base, "--paper"])).augment == 0
    assert LearnSettings.from_dict({"epochs": 4}).augment == 0  # a task stored before copies
