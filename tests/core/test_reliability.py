"""No code from a library, ever; integrity of every weight file (issue 5).

Each malicious file carries a pickle whose unpickling creates a marker file. A control test
proves the payload is live (plain ``pickle.loads`` does create the marker); every other test
checks the marker never appears and the file is refused with a message naming it, while the
other tasks of the library keep working (``TaskLibrary.problems``, ``Predictor.reload_library``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from casam_testing import (
    REPO,  # noqa: F401
    TinyBackbone,
    alignment_state,
    one_line,
    save_task,
    subprocess_env,
)

from casam.errors import CheckpointError, LibraryError
from casam.library import META, TaskLibrary


class Payload:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"blocks.0.conv1.weight": Payload(marker)})


def evil_torch_file(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"image_encoder.x": torch.zeros(1), "evil": Payload(marker)}, buf)
    return buf.getvalue()


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a pickle from a library was executed"


@pytest.fixture
def lib(tmp_path):
    lib = TaskLibrary(tmp_path / "lib")
    save_task(lib, "evil", seed=1)
    save_task(lib, "good", seed=2)
    return lib


def set_digest(lib: TaskLibrary, task: str, fname: str) -> None:
    meta_path = lib.root / task / META
    meta = json.loads(meta_path.read_text())
    meta["files"][fname] = hashlib.sha256((lib.root / task / fname).read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))


def assert_only_good_survives(lib: TaskLibrary, needle: str) -> None:
    (problem,) = lib.problems()
    assert needle in problem and "'evil'" in problem
    assert "\n" not in problem
    with pytest.raises(LibraryError) as e:
        lib.load("evil")
    assert needle in one_line(e.value)
    lib.load("good")
    from casam.predictor import Predictor

    p = Predictor(backbone=TinyBackbone(), library=lib)
    assert p.task_names == ["good"]
    assert any(needle in msg for msg in p.problems)
    p.reload_library()
    assert p.task_names == ["good"]


def test_control_the_payload_is_live(tmp_path):
    m = tmp_path / "control"
    pickle.loads(evil_pickle(m))
    assert m.exists()


@pytest.mark.parametrize(
    "fname",
    ["evil.pkl", "alignment.pth", "model.pt", "weights.bin", "__init__.py", "extra.safetensors"],
)
def test_pickle_or_stray_file_in_task_folder_is_refused(lib, marker, fname):
    (lib.root / "evil" / fname).write_bytes(evil_pickle(marker))
    assert_only_good_survives(lib, fname)


@pytest.mark.parametrize("maker", [evil_pickle, evil_torch_file])
@pytest.mark.parametrize("fname", ["alignment.safetensors", "router.safetensors"])
def test_pickle_renamed_to_safetensors_with_matching_digest_is_refused(lib, marker, maker, fname):
    (lib.root / "evil" / fname).write_bytes(maker(marker))
    set_digest(lib, "evil", fname)
    assert_only_good_survives(lib, fname)


def test_pickled_task_never_runs_on_import_or_export(lib, marker, tmp_path):
    (lib.root / "evil" / "alignment.safetensors").write_bytes(evil_pickle(marker))
    set_digest(lib, "evil", "alignment.safetensors")
    with pytest.raises(LibraryError):
        lib.export("evil", tmp_path)
    members = {
        n: (lib.root / "evil" / n).read_bytes()
        for n in (META, "alignment.safetensors", "router.safetensors")
    }
    pkg = tmp_path / "evil.casamtask"
    with zipfile.ZipFile(pkg, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    other = TaskLibrary(tmp_path / "other")
    for src in (pkg, lib.root / "evil"):
        with pytest.raises(LibraryError) as e:
            other.import_task(src, name="imported")
        assert "alignment.safetensors" in one_line(e.value)
    assert other.names() == []


def test_symlink_in_task_folder_is_refused(lib, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes((lib.root / "evil" / "router.safetensors").read_bytes())
    (lib.root / "evil" / "router.safetensors").unlink()
    (lib.root / "evil" / "router.safetensors").symlink_to(secret)
    assert_only_good_survives(lib, "router.safetensors")


def test_fifo_in_task_folder_does_not_hang(lib):
    (lib.root / "evil" / "router.safetensors").unlink()
    os.mkfifo(lib.root / "evil" / "router.safetensors")
    assert_only_good_survives(lib, "router.safetensors")


# ---- integrity ---------------------------------------------------------------------------------


def _truncate(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) * 2 // 3] ^= 0x40
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", ["truncate", "flip", "empty", "swap within", "swap across", "missing"]
)
@pytest.mark.parametrize("fname", ["alignment.safetensors", "router.safetensors"])
def test_damaged_weight_file_is_detected(lib, damage, fname):
    p = lib.root / "evil" / fname
    if damage == "truncate":
        _truncate(p)
    elif damage == "flip":
        _flip(p)
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "swap within":
        other = (
            "router.safetensors" if fname == "alignment.safetensors" else "alignment.safetensors"
        )
        a, b = p.read_bytes(), (lib.root / "evil" / other).read_bytes()
        p.write_bytes(b)
        (lib.root / "evil" / other).write_bytes(a)
    elif damage == "swap across":
        save_task(lib, "donor", seed=9)
        p.write_bytes((lib.root / "donor" / fname).read_bytes())
        shutil.rmtree(lib.root / "donor")
    elif damage == "missing":
        p.unlink()
    assert_only_good_survives(lib, ".safetensors" if damage == "swap within" else fname)


@pytest.mark.parametrize(
    "change",
    [
        {"threshold": float("inf")},
        {"threshold": float("nan")},
        {"threshold": -1.0},
        {"threshold": "0.1"},
        {"blocks": 2},
        {"blocks": 0},
        {"name": "other"},
        {"name": 5},
        {"settings": {"beta": "x"}},
        {"files": {"../../x": "0" * 64, "router.safetensors": "0" * 64}},
        {"files": []},
        {"created": None},
    ],
)
def test_malformed_metadata_is_refused(lib, change):
    meta_path = lib.root / "evil" / META
    meta = json.loads(meta_path.read_text())
    meta.update(change)
    meta_path.write_text(json.dumps(meta))
    (problem,) = lib.problems()
    assert "evil" in problem and "\n" not in problem
    assert [t.name for t in lib.tasks() if t.name == "evil"] in ([], ["evil"])
    with pytest.raises(LibraryError):
        lib.load("evil")
    lib.load("good")


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe garbage", b"[" * 100000]
)
def test_unreadable_task_json_is_refused(lib, content):
    (lib.root / "evil" / META).write_bytes(content)
    (problem,) = lib.problems()
    assert "evil" in problem and "\n" not in problem
    assert lib.names() == ["good"]


def test_folder_without_metadata_or_with_bad_name(lib):
    (lib.root / "empty").mkdir()
    os.replace(lib.root / "evil", lib.root / "sam")  # a task folder named like a reserved word
    problems = lib.problems()
    assert len(problems) == 2 and all("\n" not in p for p in problems)
    assert lib.names() == ["good"]


# ---- checkpoints of backbones --------------------------------------------------------------------


@pytest.mark.parametrize("maker", [evil_pickle, evil_torch_file])
def test_malicious_checkpoint_is_refused_not_executed(marker, tmp_path, maker):
    from casam.backbones import BACKBONES
    from casam.sam import Backbone

    ckpt = tmp_path / "sam_vit_b_evil.pth"
    ckpt.write_bytes(maker(marker))
    with pytest.raises(CheckpointError) as e:
        Backbone(BACKBONES["litemedsam"], checkpoint=ckpt, device="cpu")
    assert str(ckpt) in one_line(e.value)


# ---- the `casam check` command -----------------------------------------------------------------


def _cli_check(tmp_path: Path, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "casam.cli", "check", "--library", str(root)],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path),
        cwd=REPO,
        timeout=300,
    )


def test_cli_check_reports_every_problem(lib, tmp_path, marker):
    pytest.importorskip("casam.cli")
    ok = _cli_check(tmp_path, lib.root)
    assert ok.returncode == 0, ok.stderr
    (lib.root / "evil" / "evil.pkl").write_bytes(evil_pickle(marker))
    save_task(lib, "torn")
    _truncate(lib.root / "torn" / "router.safetensors")
    bad = _cli_check(tmp_path, lib.root)
    assert bad.returncode == 1, bad.stderr
    assert "evil.pkl" in bad.stdout and "torn" in bad.stdout and "good" not in bad.stdout
    assert "Traceback" not in bad.stderr


def test_tasks_with_different_vae_sizes_route_together(tmp_path):
    """A task learned with another vae_hidden / vae_latent (or imported) must not break routing."""
    from casam_testing import disk_images, make_info, router_state

    from casam.predictor import Predictor

    lib = TaskLibrary(tmp_path / "lib")
    lib.save(make_info("small"), alignment_state(), router_state(hidden=16, latent=4))
    lib.save(make_info("default"), alignment_state(), router_state())
    p = Predictor(backbone=TinyBackbone(), library=lib)
    assert sorted(p.task_names) == ["default", "small"]
    assert p.set_image(disk_images(1)[0][0]) is not None


def test_a_threshold_that_would_take_any_image_is_refused(tmp_path):
    """A task whose threshold dwarfs its own training scores would capture images of any kind
    (no SAM fallback, silently wrong masks): refused on save, on load and on import."""
    lib = TaskLibrary(tmp_path / "lib")
    save_task(lib, "good")
    with pytest.raises(LibraryError) as e:
        save_task(lib, "evil", threshold=1e9)
    assert "threshold" in one_line(e.value) and lib.names() == ["good"]
    # a task.json edited after the fact (its digests cover the weights, not itself)
    save_task(lib, "evil")
    meta = lib.root / "evil" / META
    d = json.loads(meta.read_text())
    d["threshold"] = 1e9
    meta.write_text(json.dumps(d))
    assert_only_good_survives(lib, "threshold")
    package = tmp_path / "evil.casamtask"
    with zipfile.ZipFile(package, "w") as z:
        for f in sorted((lib.root / "evil").iterdir()):
            z.write(f, f.name)
    other = TaskLibrary(tmp_path / "other")
    with pytest.raises(LibraryError) as e:
        other.import_task(package)
    assert "threshold" in one_line(e.value) and other.names() == []
    # a plausible threshold of the same weights still loads
    d["threshold"] = 0.5
    meta.write_text(json.dumps(d))
    assert lib.problems() == [] and lib.load("evil").info.threshold == 0.5


def test_threshold_margin_scales_the_calibrated_threshold(tmp_path):
    """The stored threshold is threshold_margin x the fold percentile, the VAE unchanged."""
    from casam_testing import disk_images, tiny_settings

    from casam.errors import InputError
    from casam.predictor import Predictor
    from casam.training import learn_task

    images, masks = disk_images(6)
    lib = TaskLibrary(tmp_path / "lib")
    p = Predictor(backbone=TinyBackbone(), library=lib)
    infos = {
        m: learn_task(
            images, masks, f"m{m}", predictor=p, settings=tiny_settings(threshold_margin=m)
        )
        for m in (1.0, 2.5)
    }
    assert infos[2.5].threshold == pytest.approx(2.5 * infos[1.0].threshold, rel=1e-6)
    assert torch.equal(
        lib.load("m1.0").router["vae.enc1.weight"], lib.load("m2.5").router["vae.enc1.weight"]
    )
    for bad in (0, -1, 11):
        with pytest.raises(InputError) as e:
            tiny_settings(threshold_margin=bad)
        assert "threshold_margin" in one_line(e.value)
        assert e.value.subject == "threshold_margin"  # the CLI names --threshold-margin


def test_reload_reads_each_task_once(tmp_path, monkeypatch):
    from casam_testing import make_info, router_state

    from casam.predictor import Predictor

    lib = TaskLibrary(tmp_path / "lib")
    for n in ("a", "b", "c"):
        save_task(lib, n)
    lib.save(
        make_info("other model", backbone="sam_vit_b:0123456789ab"),
        alignment_state(),
        router_state(),
    )
    reads = []
    real = TaskLibrary._read_weights
    monkeypatch.setattr(
        TaskLibrary, "_read_weights", lambda self, info: reads.append(info.name) or real(self, info)
    )
    p = Predictor(backbone=TinyBackbone(), library=lib)
    assert sorted(p.task_names) == ["a", "b", "c"] and p.problems == []
    assert sorted(reads) == [
        "a",
        "b",
        "c",
        "other model",
    ]  # the other model's task is verified, not kept
