"""The npe2 reader and writer: clinical volumes open with their geometry, masks save back on it."""

from __future__ import annotations

import numpy as np
import pytest
from volume_helpers import SPACING, ct_spleen, write_ct_nifti, write_ct_series  # tests/core

from casam.errors import InputError
from napari_casam._reader import get_reader
from napari_casam._volume_layers import GEOMETRY_KEY, geometry_of
from napari_casam._writer import write_labels


def test_reader_claims_volumes_and_dicom_only(tmp_path):
    write_ct_nifti(tmp_path / "scan.nii.gz")
    write_ct_series(tmp_path / "ct", n=3)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    assert get_reader(str(tmp_path / "scan.nii.gz")) is not None
    assert get_reader(str(tmp_path / "ct")) is not None
    assert get_reader(str(next((tmp_path / "ct").iterdir()))) is not None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "plain")) is None


def test_nifti_opens_with_its_mask_beside_it_and_saves_back(tmp_path):
    import nibabel as nib

    write_ct_nifti(tmp_path / "scan.nii.gz", theta=0.2)
    write_ct_nifti(tmp_path / "scan_seg.nii.gz", mask=True, theta=0.2)
    layers = get_reader(str(tmp_path / "scan.nii.gz"))(str(tmp_path / "scan.nii.gz"))
    (img, ik, it), (msk, mk, mt) = layers
    hu, truth = ct_spleen()
    assert (it, mt) == ("image", "labels") and mk["name"] == "scan_seg"
    assert np.array_equal(img, hu) and np.array_equal(msk, truth)
    assert ik["scale"] == pytest.approx(SPACING) and mk["scale"] == ik["scale"]
    assert mk["translate"] == ik["translate"] and ik["contrast_limits"] == (-160.0, 240.0)
    drawn = msk.copy()
    drawn[2, 10:20, 10:20] = 4
    (out,) = write_labels(str(tmp_path / "fixed.nii.gz"), drawn, {"metadata": mk["metadata"]})
    np.testing.assert_allclose(
        nib.load(out).affine, nib.load(tmp_path / "scan.nii.gz").affine, atol=1e-5
    )
    again = get_reader(out)(out)
    assert len(again) == 1 and again[0][2] == "labels" and np.array_equal(again[0][0], drawn)


def test_writer_without_geometry_says_what_to_do(tmp_path):
    with pytest.raises(InputError, match="not tied to a volume"):
        write_labels(str(tmp_path / "m.nii.gz"), np.zeros((2, 3, 4), np.uint8), {})
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.gui
def test_dicom_folder_in_a_real_viewer_and_masks_saved_back(make_napari_viewer, tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom

    hu, truth, files = write_ct_series(tmp_path / "ct", slope=1.0, intercept=-1024.0)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "ct"), plugin="napari-casam")
    assert np.array_equal(image.data, hu)  # sorted by position, HU applied
    assert tuple(image.scale) == pytest.approx(SPACING)
    x, y, z = pydicom.dcmread(files[0]).ImagePositionPatient
    assert tuple(image.translate) == pytest.approx((z, y, x))
    assert tuple(image.contrast_limits) == (-160.0, 240.0)
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8), scale=image.scale, translate=image.translate
    )
    labels.data[truth.astype(bool)] = 1  # "drawn" where the spleen is
    labels.refresh()
    saved = viewer.layers.save(str(tmp_path / "mask.nii.gz"), selected=True, plugin="napari-casam")
    nii = nib.load(saved[0])
    geo = geometry_of(image.metadata)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(nii.affine, lps_to_ras @ geo.affine_lps(), atol=1e-5)
    stored = np.asanyarray(nii.dataobj)  # the series' own (i, j, k) order; the affine flips
    assert np.array_equal(np.transpose(stored, (2, 1, 0)), truth)
    ijk = np.argwhere(stored)[0]
    ras = nii.affine @ [*ijk, 1]
    dcm = pydicom.dcmread(files[ijk[2]])  # that voxel lies on slice k of the sorted series
    lps = np.asarray(dcm.ImagePositionPatient, float) + [
        ijk[0] * SPACING[2],
        ijk[1] * SPACING[1],
        0,
    ]
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    labels.metadata[GEOMETRY_KEY] = image.metadata[GEOMETRY_KEY]
    viewer.layers.save(str(tmp_path / "seg.dcm"), selected=True, plugin="napari-casam")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(files[0]).SeriesInstanceUID
    )
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert np.array_equal(seg.get_pixels_by_source_instance(uids, combine_segments=True), truth)
    (seg_layer,) = viewer.open(str(tmp_path / "seg.dcm"), plugin="napari-casam")
    assert seg_layer.__class__.__name__ == "Labels" and np.array_equal(seg_layer.data, truth)
    assert tuple(seg_layer.translate) == tuple(image.translate)


def test_cli_and_napari_reader_give_the_same_array(tmp_path):
    import SimpleITK as sitk

    from casam.io import read_slices

    write_ct_nifti(tmp_path / "scan.nii.gz", theta=0.3)
    write_ct_series(tmp_path / "ct", slope=2.0, intercept=-1000.0)
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "scan.nii.gz")), str(tmp_path / "scan.nrrd"))
    for name in ("scan.nii.gz", "scan.nrrd", "ct"):
        path = str(tmp_path / name)
        ((data, _, kind),) = get_reader(path)(path)
        assert kind == "image"
        assert np.array_equal(np.stack(read_slices(tmp_path / name)), data)


@pytest.mark.gui
def test_dock_masks_keep_the_scans_geometry_and_ct_windows(
    make_napari_viewer, open_dock, tmp_path, wait_idle
):
    import nibabel as nib

    write_ct_nifti(tmp_path / "scan.nii.gz", theta=0.2)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "scan.nii.gz"), plugin="napari-casam")
    dock = open_dock(viewer, wait=False)
    masks = dock.masks_layer()
    assert geometry_of(masks.metadata) == geometry_of(image.metadata)
    panel = dock.volume
    assert panel.apply_window("lung") and tuple(image.contrast_limits) == (-1350.0, 150.0)
    assert panel.save_masks(str(tmp_path / "empty.dcm")) is None
    assert "DICOM source" in panel.status.text()
    _, truth = ct_spleen()
    masks.data = truth.astype(masks.data.dtype)
    written = panel.save_masks(str(tmp_path / "dock.nii.gz"))
    assert written and panel.status.text().startswith("Saved")
    np.testing.assert_allclose(
        nib.load(written).affine, nib.load(tmp_path / "scan.nii.gz").affine, atol=1e-5
    )
    from casam.volumes import read_mask_like

    assert np.array_equal(read_mask_like(written, geometry_of(image.metadata)), truth)
    wait_idle(dock)
