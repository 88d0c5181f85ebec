"""The task library on disk: round trips, overwrite, remove, rename, export/import, versions,
leftovers of interrupted writes, and a full disk during save (issue 5)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from casam_testing import (
    TINY_IDENTITY,
    alignment_state,
    make_info,
    one_line,
    router_state,
    save_task,
    snapshot,
)

import casam.library as library
import casam.library.format as fmt
from casam.config import ADAPTER_FORMATS, LIBRARY_FORMAT_VERSION, TASK_FORMAT_VERSION
from casam.errors import InputError, LibraryError, TaskExistsError
from casam.library import MARKER, META, TaskLibrary, exchange, fs  # noqa: E402


@pytest.fixture
def lib(tmp_path):
    return TaskLibrary(tmp_path / "lib")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- round trip ------------------------------------------------------------------------------


def test_round_trip_keeps_weights_and_metadata(lib):
    align, router = alignment_state(blocks=2, seed=3), router_state(seed=3, n=9)
    info = lib.save(make_info("CT spleen", blocks=2, threshold=0.123), align, router)
    assert info.path == lib.root / "CT spleen"
    loaded = lib.load("CT spleen")
    assert loaded.info.threshold == 0.123 and loaded.info.blocks == 2
    # an Alignment Layer task is written as format 2, so readers of format 2 keep reading it
    assert loaded.info.format_version == ADAPTER_FORMATS["alignment"] == 2 < TASK_FORMAT_VERSION
    assert loaded.info.adapter == "alignment"
    for k, v in align.items():
        assert torch.equal(loaded.alignment[k], v)
    for k, v in router.items():
        assert torch.equal(loaded.router[k], v)
    meta = json.loads((lib.root / "CT spleen" / META).read_text())
    assert meta["name"] == "CT spleen" and set(meta["files"]) == set(library.WEIGHT_FILES)
    assert sorted(p.name for p in (lib.root / "CT spleen").iterdir()) == sorted(library.TASK_FILES)
    assert lib.problems() == [] and lib.names() == ["CT spleen"] and "CT spleen" in lib


def test_tasks_of_other_backbones_are_listed_inactive(lib):
    save_task(lib, "mine", backbone=TINY_IDENTITY)
    save_task(lib, "theirs", backbone="sam_vit_b:0123456789ab")
    active = {t.name: t.active for t in lib.tasks(TINY_IDENTITY)}
    assert active == {"mine": True, "theirs": False}


def test_existing_name_is_refused_and_kept(lib):
    save_task(lib, "A", seed=1)
    before = snapshot(lib.root)
    with pytest.raises(TaskExistsError) as e:
        save_task(lib, "A", seed=2)
    assert "A" in one_line(e.value)
    assert snapshot(lib.root) == before


def test_names_differing_only_in_case_are_refused(lib, tmp_path):
    # one folder on macOS/Windows: a library holding both could not be copied there
    save_task(lib, "CT Spleen", seed=1)
    save_task(lib, "other", seed=2)
    before = snapshot(lib.root)
    for attempt in (
        lambda: save_task(lib, "ct spleen", seed=3),
        lambda: save_task(lib, "CT SPLEEN", seed=3, overwrite=True),
        lambda: lib.rename("other", "ct spleen"),
        lambda: lib.import_task(lib.export("other", tmp_path), name="ct SPLEEN"),
    ):
        with pytest.raises(TaskExistsError) as e:
            attempt()
        msg = one_line(e.value)
        assert "'CT Spleen'" in msg and "case" in msg
    assert snapshot(lib.root) == before
    save_task(lib, "CT Spleen", seed=4, overwrite=True)  # the same name may still be retrained
    assert lib.names() == ["CT Spleen", "other"] and lib.problems() == []


def test_overwrite_replaces_whole_task_and_leaves_nothing_behind(lib):
    save_task(lib, "A", seed=1)
    save_task(lib, "A", seed=2, overwrite=True)
    assert torch.equal(
        lib.load("A").alignment["blocks.0.conv1.weight"],
        alignment_state(seed=2)["blocks.0.conv1.weight"],
    )
    assert [p.name for p in lib.root.iterdir() if p.name.startswith((".tmp-", ".trash-"))] == []


def test_save_refuses_weights_that_are_not_a_task(lib):
    before = snapshot(lib.root)
    with pytest.raises(LibraryError) as e:
        lib.save(make_info("bad"), {"w": torch.zeros(3)}, router_state())
    one_line(e.value)
    with pytest.raises(LibraryError):
        lib.save(make_info("bad", blocks=2), alignment_state(blocks=1), router_state())
    broken = router_state()
    broken["features"] = torch.full((3, 256), float("nan"))
    with pytest.raises(LibraryError):
        lib.save(make_info("bad"), alignment_state(), broken)
    assert snapshot(lib.root) == before


def test_remove(lib):
    save_task(lib, "A")
    save_task(lib, "B")
    lib.remove("A")
    assert lib.names() == ["B"]
    with pytest.raises(LibraryError) as e:
        lib.remove("A")
    assert "no task named 'A'" in one_line(e.value)
    assert [p.name for p in lib.root.iterdir() if p.name.startswith(".tmp-")] == []


def test_remove_works_on_a_broken_task(lib):
    save_task(lib, "A")
    (lib.root / "A" / "router.safetensors").write_bytes(b"garbage")
    assert len(lib.problems()) == 1
    lib.remove("A")
    assert lib.problems() == [] and lib.names() == []


def test_rename(lib):
    save_task(lib, "old", seed=4)
    save_task(lib, "other", seed=5)
    info = lib.rename("old", "new")
    assert info.name == "new" and lib.names() == ["new", "other"]
    assert torch.equal(lib.load("new").router["features"], router_state(seed=4)["features"])
    assert lib.problems() == []
    before = snapshot(lib.root)
    with pytest.raises(TaskExistsError):
        lib.rename("new", "other")
    with pytest.raises(LibraryError):
        lib.rename("missing", "x")
    with pytest.raises(InputError):
        lib.rename("new", "../x")
    assert snapshot(lib.root) == before
    assert lib.rename("new", "new").name == "new"


def test_rename_refuses_a_broken_task(lib):
    save_task(lib, "A")
    with open(lib.root / "A" / "alignment.safetensors", "r+b") as f:
        f.truncate(100)
    before = snapshot(lib.root)
    with pytest.raises(LibraryError):
        lib.rename("A", "B")
    assert snapshot(lib.root) == before


# ---- export / import ---------------------------------------------------------------------------


def test_export_import_round_trip(lib, tmp_path):
    save_task(lib, "A", seed=7)
    f = lib.export("A", tmp_path)
    assert f.name == "A.casamtask" and zipfile.is_zipfile(f)
    with zipfile.ZipFile(f) as z:
        assert sorted(z.namelist()) == sorted(library.TASK_FILES)
    other = TaskLibrary(tmp_path / "other")
    info = other.import_task(f)
    assert info.name == "A" and other.problems() == []
    assert torch.equal(
        other.load("A").alignment["blocks.0.conv1.weight"],
        lib.load("A").alignment["blocks.0.conv1.weight"],
    )
    with pytest.raises(TaskExistsError):
        other.import_task(f)
    assert other.import_task(f, name="A copy").name == "A copy"
    assert other.import_task(lib.root / "A", name="from folder").name == "from folder"
    assert other.import_task(f, overwrite=True).name == "A"
    assert other.problems() == []


def _zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _exported(lib, tmp_path) -> dict[str, bytes]:
    save_task(lib, "A")
    with zipfile.ZipFile(lib.export("A", tmp_path / "A.casamtask")) as z:
        return {n: z.read(n) for n in z.namelist()}


@pytest.mark.parametrize(
    "evil", ["../task.json", "/etc/passwd", "sub/alignment.safetensors", "evil.pkl", "..\\x"]
)
def test_import_refuses_members_with_paths_or_foreign_files(lib, tmp_path, evil):
    members = _exported(lib, tmp_path)
    target = TaskLibrary(tmp_path / "target")
    bad = _zip(tmp_path / "bad.casamtask", {**members, evil: b"x"})
    with pytest.raises(LibraryError) as e:
        target.import_task(bad)
    assert repr(evil) in one_line(e.value)
    assert target.names() == [] and not (tmp_path / "etc").exists()


def test_import_refuses_duplicate_members(lib, tmp_path):
    members = _exported(lib, tmp_path)
    bad = tmp_path / "dup.casamtask"
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
        with pytest.warns(UserWarning):
            z.writestr(META, members[META])
    with pytest.raises(LibraryError) as e:
        TaskLibrary(tmp_path / "t").import_task(bad)
    assert "twice" in one_line(e.value)


def test_import_refuses_zip_bombs(lib, tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_WEIGHT_BYTES", 4 << 20)
    big = _zip(tmp_path / "big.casamtask", {"router.safetensors": bytes(8 << 20)})
    assert big.stat().st_size < 100_000  # 8 MB of zeros compress to almost nothing
    target = TaskLibrary(tmp_path / "t")
    with pytest.raises(LibraryError) as e:
        target.import_task(big)
    assert "router.safetensors" in one_line(e.value)
    # A member whose header lies about its size: never read beyond the declared size.
    raw = bytearray(big.read_bytes())
    declared = struct.pack("<I", 8 << 20)
    assert raw.count(declared) == 2  # local header and central directory
    raw = raw.replace(declared, struct.pack("<I", 1000))
    liar = tmp_path / "liar.casamtask"
    liar.write_bytes(bytes(raw))
    with pytest.raises(LibraryError) as e:
        target.import_task(liar)
    one_line(e.value)
    assert target.names() == []


@pytest.mark.parametrize(
    "case", ["not a zip", "missing file", "bad digest", "bad json", "newer", "bad name", "no file"]
)
def test_import_refuses_broken_packages(lib, tmp_path, case):
    members = _exported(lib, tmp_path)
    meta = json.loads(members[META])
    src = tmp_path / "x.casamtask"
    if case == "not a zip":
        src.write_bytes(b"PK\x03\x04 this is not really a zip")
    elif case == "missing file":
        _zip(src, {k: v for k, v in members.items() if k != "router.safetensors"})
    elif case == "bad digest":
        _zip(src, {**members, "router.safetensors": members["router.safetensors"][:-8] + b"\0" * 8})
    elif case == "bad json":
        _zip(src, {**members, META: b"{not json"})
    elif case == "newer":
        _zip(
            src,
            {
                **members,
                META: json.dumps({**meta, "format_version": TASK_FORMAT_VERSION + 1}).encode(),
            },
        )
    elif case == "bad name":
        _zip(src, {**members, META: json.dumps({**meta, "name": "../../evil"}).encode()})
    target = TaskLibrary(tmp_path / "t")
    with pytest.raises((LibraryError, InputError)) as e:
        target.import_task(src)
    one_line(e.value)
    assert target.names() == [] and not (tmp_path / "evil").exists()


# ---- versions -------------------------------------------------------------------------------


def test_newer_library_is_refused(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    (root / MARKER).write_text(
        json.dumps({"format": "casam-task-library", "format_version": LIBRARY_FORMAT_VERSION + 1})
    )
    with pytest.raises(LibraryError) as e:
        TaskLibrary(root)
    assert "upgrade" in one_line(e.value) and "newer" in str(e.value)


@pytest.mark.parametrize("marker", [None, {"format": "casam-task-library", "format_version": 0}])
def test_older_or_unmarked_library_is_migrated(tmp_path, marker):
    src = TaskLibrary(tmp_path / "src")
    save_task(src, "A")
    root = tmp_path / "old"
    root.mkdir()
    shutil.copytree(src.root / "A", root / "A")
    meta = json.loads((root / "A" / META).read_text())
    del meta["format_version"]  # written before versions were recorded
    (root / "A" / META).write_text(json.dumps(meta))
    if marker is not None:
        (root / MARKER).write_text(json.dumps(marker))
    lib = TaskLibrary(root)
    assert json.loads((root / MARKER).read_text())["format_version"] == LIBRARY_FORMAT_VERSION
    assert lib.names() == ["A"] and lib.problems() == []
    assert lib.load("A").info.name == "A"


def test_unreadable_marker_is_refused(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    (root / MARKER).write_text("{broken")
    with pytest.raises(LibraryError) as e:
        TaskLibrary(root)
    assert MARKER in one_line(e.value)


def test_task_of_newer_format_is_refused_others_work(lib):
    save_task(lib, "new")
    save_task(lib, "ok")
    meta = json.loads((lib.root / "new" / META).read_text())
    meta["format_version"] = TASK_FORMAT_VERSION + 1
    (lib.root / "new" / META).write_text(json.dumps(meta))
    (problem,) = lib.problems()
    assert "'new'" in problem and "newer" in problem and "upgrade" in problem
    assert lib.names() == ["ok"]
    with pytest.raises(LibraryError):
        lib.load("new")
    lib.load("ok")


def test_library_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LibraryError) as e:
        TaskLibrary(f)
    one_line(e.value)
    with pytest.raises(LibraryError):
        TaskLibrary(tmp_path / "missing", create=False)


# ---- leftovers of interrupted writes -----------------------------------------------------------


def test_stale_tmp_of_dead_process_is_removed_live_one_kept(lib):
    save_task(lib, "A")
    host = fs.HOST
    dead = lib.root / f".tmp-{dead_pid()}-{host}-aaaaaaaaaaaa"
    mine = lib.root / f".tmp-{os.getpid()}-{host}-bbbbbbbbbbbb"  # our pid, but nothing of ours
    alive = lib.root / f".tmp-{os.getppid()}-{host}-cccccccccccc"
    legacy = lib.root / f".tmp-{dead_pid()}-dddddddddddd"
    for d in (dead, mine, alive, legacy):
        d.mkdir()
        (d / "alignment.safetensors").write_bytes(b"partial")
    TaskLibrary(lib.root)
    assert not dead.exists() and not mine.exists() and not legacy.exists()
    assert alive.exists()  # may be a save in progress
    assert lib.names() == ["A"] and lib.problems() == []


def test_interrupted_overwrite_puts_old_task_back(lib):
    """Killed between 'old -> trash' and 'new -> place': the old task must come back."""
    save_task(lib, "A", seed=1)
    save_task(lib, "B", seed=2)
    os.replace(lib.root / "A", lib.root / ".trash-0badc0de-A")
    assert lib.names() == ["B"]
    lib2 = TaskLibrary(lib.root)
    assert lib2.names() == ["A", "B"] and lib2.problems() == []
    assert torch.equal(lib2.load("A").router["features"], router_state(seed=1)["features"])
    assert not any(p.name.startswith(".trash-") for p in lib.root.iterdir())


def test_finished_overwrite_drops_trash(lib):
    save_task(lib, "A", seed=2)
    shutil.copytree(lib.root / "A", lib.root / ".trash-0badc0de-A")
    TaskLibrary(lib.root)
    assert not (lib.root / ".trash-0badc0de-A").exists()
    assert torch.equal(lib.load("A").router["features"], router_state(seed=2)["features"])


def test_partial_trash_is_not_resurrected(lib):
    """Killed while deleting the trash, then the task removed: nothing half-deleted comes back."""
    save_task(lib, "A")
    os.replace(lib.root / "A", lib.root / ".trash-0badc0de-A")
    (lib.root / ".trash-0badc0de-A" / "router.safetensors").unlink()
    lib2 = TaskLibrary(lib.root)
    assert lib2.names() == [] and lib2.problems() == []
    assert not (lib.root / ".trash-0badc0de-A").exists()


def test_failed_rename_into_place_restores_old_version(lib, monkeypatch):
    save_task(lib, "A", seed=1)
    before = snapshot(lib.root)
    real_replace = os.replace

    def flaky(src, dst):
        if Path(src).name.startswith(".tmp-") and Path(dst).name == "A":
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(fs.os, "replace", flaky)
    with pytest.raises(LibraryError) as e:
        save_task(lib, "A", seed=2, overwrite=True)
    one_line(e.value)
    monkeypatch.undo()
    assert snapshot(lib.root) == before
    assert not any(p.name.startswith((".tmp-", ".trash-")) for p in lib.root.iterdir())


# ---- full disk -------------------------------------------------------------------------------


def _disk_fills_after(monkeypatch, n_ok: int):
    calls = {"n": 0}

    def write(path, data):
        calls["n"] += 1
        with open(path, "wb") as f:
            if calls["n"] > n_ok:
                f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write(data)

    monkeypatch.setattr(fs, "write_file", write)


@pytest.mark.parametrize("n_ok", [0, 1, 2])
@pytest.mark.parametrize("overwrite", [False, True])
def test_full_disk_during_save_changes_nothing(lib, monkeypatch, n_ok, overwrite):
    save_task(lib, "A", seed=1)
    before = snapshot(lib.root)
    _disk_fills_after(monkeypatch, n_ok)
    with pytest.raises(LibraryError) as e:
        save_task(lib, "A" if overwrite else "B", seed=2, overwrite=overwrite)
    msg = one_line(e.value)
    assert "disk is full" in msg and "nothing in the library was changed" in msg
    monkeypatch.undo()
    assert snapshot(lib.root) == before
    assert not any(p.name.startswith((".tmp-", ".trash-")) for p in lib.root.iterdir())
    assert lib.problems() == []


def test_full_disk_during_export_leaves_no_file(lib, tmp_path, monkeypatch):
    save_task(lib, "A")

    class FullZip(zipfile.ZipFile):
        def writestr(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exchange.zipfile, "ZipFile", FullZip)
    with pytest.raises(LibraryError) as e:
        lib.export("A", tmp_path / "out.casamtask")
    assert "disk is full" in one_line(e.value)
    assert list(tmp_path.glob("*out.casamtask*")) == []
