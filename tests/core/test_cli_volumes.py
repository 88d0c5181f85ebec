"""The CLI on clinical volumes (real CT slices): masks come back with the scan's geometry.

Runs the real LiteMedSAM backbone on a few slices and learns a task from 7 of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from volume_helpers import write_ct_nifti, write_ct_series

from casam.cli import main
from casam.metrics import iou
from casam.volumes import read_mask_like, read_volume

pytestmark = pytest.mark.slow
K = 5


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _box(mask2d: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask2d)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_segment_volume_writes_a_volume_mask_with_the_scans_affine(capsys, tmp_path):
    import nibabel as nib

    write_ct_nifti(tmp_path / "scan.nii.gz", theta=0.2)
    vol = read_volume(tmp_path / "scan.nii.gz")
    truth = read_mask_like(write_truth(tmp_path, vol), vol.geometry)
    common = ["--library", tmp_path / "lib", "--cache", tmp_path / "cache", "--task", "sam"]
    code, out, err = run(
        capsys, "segment", *common, tmp_path / "scan.nii.gz", "--slice", K,
        "--box", *_box(truth[K]), "--out", tmp_path / "mask.nii.gz",
    )  # fmt: skip
    assert code == 0, err
    nii = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(nii.affine, nib.load(tmp_path / "scan.nii.gz").affine, atol=1e-5)
    mask = read_mask_like(tmp_path / "mask.nii.gz", vol.geometry)
    assert mask.shape == vol.voxels.shape and not np.delete(mask, K, axis=0).any()
    assert iou(mask[K] > 0, truth[K] > 0) > 0.6  # the mask sits on the spleen
    code, _, err = run(
        capsys, "segment", *common, tmp_path / "scan.nii.gz", "--slice", K,
        "--box", *_box(truth[K]), "--out", tmp_path / "seg.dcm",
    )  # fmt: skip
    assert code == 2 and "DICOM source" in err and not (tmp_path / "seg.dcm").exists()


def write_truth(tmp_path, vol):
    path = tmp_path / "scan_seg.nii.gz"
    write_ct_nifti(path, theta=0.2, mask=True)
    return path


def test_dicom_series_segment_to_seg_and_learn_from_seg(capsys, tmp_path):
    import highdicom as hd
    import pydicom

    _, truth, files = write_ct_series(tmp_path / "ct", n=7)
    vol = read_volume(tmp_path / "ct")
    common = ["--library", tmp_path / "lib", "--cache", tmp_path / "cache"]
    code, out, err = run(
        capsys, "segment", *common, "--task", "sam", tmp_path / "ct", "--slice", K,
        "--box", *_box(truth[K]), "--out", tmp_path / "seg.dcm",
    )  # fmt: skip
    assert code == 0, err
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(files[0]).SeriesInstanceUID
    )
    mask = read_mask_like(tmp_path / "seg.dcm", vol.geometry)
    assert iou(mask[K] > 0, truth[K] > 0) > 0.6 and not np.delete(mask, K, axis=0).any()
    from casam.volumes import write_mask_like

    write_mask_like(truth, vol, tmp_path / "truth.dcm", {1: "spleen"})
    code, out, err = run(
        capsys, "learn", *common, "--name", "CT spleen", "--images", tmp_path / "ct",
        "--masks", tmp_path / "truth.dcm", "--epochs", "1", "--vae-steps", "50",
    )  # fmt: skip
    assert code == 0, err
    assert "task 'CT spleen' saved" in out and "6 training slices" in out and "(1 slices)" in out
