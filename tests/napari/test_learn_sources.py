"""Where a task is learned from: several open images with their Labels layers, or files read
as ``casam learn`` reads them. The dock's Qt-free learn model with a fake engine (no display,
no model); the files are real NIfTI volumes and DICOM series written from the test slices."""

from __future__ import annotations

import numpy as np
import pytest
from fake_engine import FakeSession
from volume_helpers import ct_spleen, write_ct_nifti, write_ct_series, write_mask_nifti

from napari_casam._model import LearnModel


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setenv("CASAM_NAPARI_NOTHREADS", "1")
    m = LearnModel(FakeSession(names=["CT spleen"]))
    m.notices = []
    m.notify = lambda kind, msg: m.notices.append((kind, msg))
    m.messages = []
    m.message.connect(m.messages.append)
    m.states = []
    m.state_changed.connect(m.states.append)
    return m


def learned(model):
    """The fake engine's training calls: (n images, image names, overwrite, extend)."""
    return [c[1:] for c in model.session.calls if c[0] == "learn"]


def patient(name, shape, slices, rgb=False):
    from napari.layers import Image, Labels

    data = np.random.default_rng(len(name)).random((*shape, 3) if rgb else shape)
    lab = np.zeros(shape, np.uint8)
    for k in slices:
        lab[k, 5:15, 5:15] = 1
        lab[k, 20:25, 20:25] = 2
    return Image(data, name=name, rgb=rgb), Labels(lab, name=f"{name} masks")


# ---- several open images, each with its own Labels layer --------------------------------
def test_several_patients_learn_one_task_and_unlabelled_slices_are_skipped(model):
    a = patient("patient A", (6, 30, 40), [0, 2, 4])
    b = patient("patient B", (4, 50, 30), [1, 3])
    assert model.start_layers("Liver", "new", [a, b], epochs=3)
    (call,) = learned(model)
    n, names, overwrite, extend = call
    assert n == 5 and (overwrite, extend) == (False, False)
    assert names == [f"patient A[{k}]" for k in (0, 2, 4)] + [f"patient B[{k}]" for k in (1, 3)]
    assert model.messages[0] == (
        "Learning “Liver” from 5 annotated images of 2 image layers "
        "(5 slices without labels skipped)…"
    )
    assert model.states == [True, False] and model.session.saved == ["Liver"]
    assert model.last_error is None


def test_the_images_reach_the_engine_with_their_own_masks(model, monkeypatch):
    seen = {}

    def job_learn(images, masks, name, settings, overwrite, extend, cancel, names=None):
        seen.update(images=images, masks=masks)
        return (yield from FakeSession._train(model.session, name, settings))

    monkeypatch.setattr(model.session, "job_learn", job_learn)
    a = patient("A", (3, 30, 40), [1])
    b = patient("B", (50, 30), [])  # a 2-D image: its one plane
    b[1].data[10:20, 10:20] = 3
    assert model.start_layers("Liver", "new", [a, b], epochs=1)
    assert [i.shape for i in seen["images"]] == [(30, 40), (50, 30)]
    assert np.array_equal(seen["images"][0], a[0].data[1])
    assert np.array_equal(seen["masks"][0], a[1].data[1])
    assert np.array_equal(seen["masks"][1], b[1].data)


def test_a_pair_of_different_shapes_is_refused_with_both_shapes(model):
    a = patient("A", (6, 30, 40), [1])
    other = patient("B", (6, 30, 41), [1])
    assert not model.start_layers("Liver", "new", [a, (other[0], a[1])], epochs=1)
    assert model.last_error == (
        "“B” is 6×30×41 but its labels “A masks” are 6×30×40; choose the Labels layer drawn "
        "on this image."
    )
    assert model.notices == [("warning", model.last_error)]
    assert learned(model) == [] and model.states == [] and not model.running


def test_pair_selection_refusals(model):
    a, b = patient("A", (6, 30, 40), []), patient("B", (6, 30, 40), [])
    rgb = patient("C", (2, 30, 40), [0], rgb=True)
    assert not model.start_layers("Liver", "new", [a, b], epochs=1)
    assert model.last_error == (
        "None of “A masks”, “B masks” has labels yet: segment and correct some slices first."
    )
    assert not model.start_layers("Liver", "new", [a, (a[0], b[1])], epochs=1)
    assert model.last_error == "“A” is chosen twice; pick each image once."
    assert not model.start_layers("Liver", "new", [a, (b[0], None)], epochs=1)
    assert model.last_error == "Choose the Labels layer with the corrected masks of “B”."
    assert not model.start_layers("CT spleen", "new", [rgb], epochs=1)
    assert "exists" in model.last_error
    assert learned(model) == []
    # an RGB image's labels have its spatial shape; one empty pair among labelled ones is fine
    assert model.start_layers("Liver", "new", [rgb, a], epochs=1)
    assert learned(model) == [(1, ["C[0]"], False, False)]


# ---- files and folders, read as casam learn reads them ----------------------------------
def test_files_are_read_in_the_worker_then_trained_like_layers(model, tmp_path):
    write_ct_nifti(tmp_path / "scan.nii.gz", n=8)
    _, truth = ct_spleen(8)
    mask = truth.copy()
    mask[[0, 7]] = 0  # two empty slices are skipped, as casam learn skips them
    write_mask_nifti(tmp_path / "seg.nii.gz", mask)
    from casam.volumes import read_volume, write_mask_like

    _, series_mask, _ = write_ct_series(tmp_path / "dicom", n=6)
    geometry = read_volume(tmp_path / "dicom").geometry
    write_mask_like(series_mask, geometry, tmp_path / "dicom_seg.nii.gz")  # the dock's writer
    images = [str(tmp_path / "scan.nii.gz"), str(tmp_path / "dicom")]
    masks = [str(tmp_path / "seg.nii.gz"), str(tmp_path / "dicom_seg.nii.gz")]
    progress = []
    model.progress.connect(lambda text, v, n: progress.append(text))
    assert model.start_files("Spleen", "new", images, masks, epochs=2)
    assert model.last_error is None, model.last_error
    assert model.files_read == (12, 2)
    (call,) = learned(model)
    assert call[0] == 12 and call[1][0] == f"{images[0]}[1]" and call[1][-1] == f"{images[1]}[5]"
    assert progress[:3] == [
        "Starting…",
        "Reading the image and mask files…",
        "Read 12 annotated slices (2 empty skipped)",
    ]
    assert model.messages[:2] == [
        "Learning “Spleen” from files: reading 2 image paths…",
        "Learning “Spleen” from 12 annotated slices of files (2 empty skipped)… "
        "Estimated time: about 9 s on this machine.",
    ]
    assert model.session.saved == ["Spleen"] and model.states == [True, False]


def test_a_dicom_series_learns_with_its_dicom_seg(model, tmp_path):
    from casam.volumes import read_volume, write_mask_like

    _, mask, _ = write_ct_series(tmp_path / "ct", n=7)
    mask[3] = 0
    write_mask_like(mask, read_volume(tmp_path / "ct").geometry, tmp_path / "ct_seg.dcm")
    assert model.start_files("Spleen", "new", [tmp_path / "ct"], [tmp_path / "ct_seg.dcm"], 1)
    assert model.last_error is None, model.last_error
    assert model.files_read == (6, 1)
    assert learned(model)[0][1] == [f"{tmp_path / 'ct'}[{k}]" for k in (0, 1, 2, 4, 5, 6)]


def test_cancel_while_the_files_are_read_trains_nothing(model, tmp_path):
    write_ct_nifti(tmp_path / "scan.nii.gz", n=6)
    write_mask_nifti(tmp_path / "seg.nii.gz", ct_spleen(6)[1])
    model.progress.connect(lambda text, v, n: model.cancel() if text.startswith("Read ") else None)
    assert model.start_files(
        "Spleen", "new", [tmp_path / "scan.nii.gz"], [tmp_path / "seg.nii.gz"], 1
    )
    assert model.messages[-1] == "Training cancelled; nothing was saved."
    assert model.session.saved == [] and model.states == [True, False]


def test_the_files_reach_the_engine_as_the_cli_reads_them(model, tmp_path, monkeypatch):
    from casam.io import read_pairs

    write_ct_nifti(tmp_path / "scan.nii.gz", n=6)
    write_mask_nifti(tmp_path / "seg.nii.gz", ct_spleen(6)[1])
    seen = {}

    def job_learn(images, masks, name, settings, overwrite, extend, cancel, names=None):
        seen.update(images=images, masks=masks, overwrite=overwrite, extend=extend)
        return (yield from FakeSession._train(model.session, name, settings))

    monkeypatch.setattr(model.session, "job_learn", job_learn)
    args = [str(tmp_path / "scan.nii.gz")], [str(tmp_path / "seg.nii.gz")]
    assert model.start_files("CT spleen", "replace", *args, epochs=1)
    cli, _ = read_pairs(*args)
    assert len(seen["images"]) == len(cli) == 6 and (seen["overwrite"], seen["extend"]) == (
        True,
        False,
    )
    for got, want in zip(seen["images"], cli, strict=True):
        assert np.array_equal(got, want.image)
    for got, want in zip(seen["masks"], cli, strict=True):
        assert np.array_equal(got, want.mask)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("geometry", "mask of {scan}: "),
        ("empty", "Masks: all 6 mask slices are empty; there is nothing to learn from"),
        ("few", "only 2 annotated slice(s); a task needs at least 5 for its 5-fold"),
        ("unreadable", "cannot read {bad}"),
        ("count", "2 image files but 1 mask files; give one mask file per image file"),
        ("missing", "Masks: {tmp}/nothing.nii.gz does not exist"),
    ],
)
def test_bad_files_give_the_clis_line_and_save_nothing(model, tmp_path, case, expected):
    scan, seg, bad = tmp_path / "scan.nii.gz", tmp_path / "seg.nii.gz", tmp_path / "bad.nii.gz"
    write_ct_nifti(scan, n=6)
    truth = ct_spleen(6)[1]
    images, masks = [str(scan)], [str(seg)]
    if case == "geometry":
        write_mask_nifti(seg, truth[:, :, :-3])
    elif case == "empty":
        write_mask_nifti(seg, np.zeros_like(truth))
    elif case == "few":
        truth[2:] = 0
        write_mask_nifti(seg, truth)
    elif case == "unreadable":
        bad.write_bytes(b"\x1f\x8b not a volume")
        masks = [str(bad)]
    elif case == "count":
        write_mask_nifti(seg, truth)
        images = [str(scan), str(scan)]
    elif case == "missing":
        masks = [str(tmp_path / "nothing.nii.gz")]
    assert model.start_files("Spleen", "new", images, masks, epochs=1)  # refused in the worker
    want = expected.format(scan=scan, bad=bad, tmp=tmp_path)
    assert model.last_error and model.last_error.startswith(want), model.last_error
    assert "\n" not in model.last_error and "Traceback" not in model.last_error
    assert model.notices == [("warning", model.last_error)]
    assert learned(model) == [] and model.session.saved == []
    assert model.states == [True, False] and not model.running


def test_a_file_request_is_checked_before_any_reading(model, tmp_path):
    assert not model.start_files("Spleen", "new", [], [str(tmp_path)], epochs=1)
    assert model.last_error == "Choose the image files or folders to learn from."
    assert not model.start_files("Spleen", "new", [str(tmp_path)], [], epochs=1)
    assert model.last_error == "Choose the mask files or folders, one per image file or folder."
    assert not model.start_files("CT spleen", "new", [str(tmp_path)], [str(tmp_path)], epochs=1)
    assert "exists" in model.last_error
    assert model.states == [] and model.files_read is None
