"""Clinical volumes: geometry kept on read, masks written back on the source grid, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from volume_helpers import (
    ORIGIN,
    SPACING,
    ct_affine_ras,
    ct_spleen,
    write_ct_nifti,
    write_ct_series,
)

from casam.errors import InputError
from casam.volumes import Geometry, read_mask_like, read_volume, write_mask_like


@pytest.mark.parametrize("theta", [0.0, 0.3])
def test_nifti_round_trip_keeps_affine_and_voxels(tmp_path, theta):
    import nibabel as nib

    src = tmp_path / "scan.nii.gz"
    write_ct_nifti(src, theta=theta)
    vol = read_volume(src)
    hu, msk = ct_spleen()
    assert np.array_equal(vol.voxels, hu)  # LPS+ order: axial slices on the first axis
    assert vol.geometry.spacing == pytest.approx(SPACING)
    assert vol.geometry.oblique == (theta != 0.0)
    assert any("orientation approximate" in n for n in vol.notes) == (theta != 0.0)
    assert vol.is_ct
    drawn = np.zeros_like(msk)
    drawn[4, 30:50, 40:70] = 3
    out = write_mask_like(drawn, vol, tmp_path / "mask.nii.gz")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, nib.load(src).affine, atol=1e-5)
    stored = np.transpose(drawn, (2, 1, 0))[::-1, ::-1, :]
    assert np.array_equal(np.asanyarray(back.dataobj), stored)
    assert np.array_equal(read_mask_like(out, vol.geometry), drawn)


def test_nrrd_and_mha_round_trip_with_simpleitk(tmp_path):
    import SimpleITK as sitk

    hu, msk = ct_spleen()
    img = sitk.GetImageFromArray(hu[:, ::-1, :].copy())  # stored anterior-to-posterior flipped
    img.SetSpacing((0.8, 0.7, 2.5))
    img.SetOrigin((3.0, -4.0, 5.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    for sfx in (".nrrd", ".mha"):
        sitk.WriteImage(img, str(tmp_path / f"scan{sfx}"))
        vol = read_volume(tmp_path / f"scan{sfx}")
        assert np.array_equal(vol.voxels, hu)
        assert vol.geometry.native_orientation == "LAS"
        out = write_mask_like(msk, vol, tmp_path / f"mask{sfx}")
        back = sitk.ReadImage(str(out))
        assert back.GetOrigin() == img.GetOrigin() and back.GetDirection() == img.GetDirection()
        assert np.allclose(back.GetSpacing(), img.GetSpacing())
        assert np.array_equal(sitk.GetArrayFromImage(back), msk[:, ::-1, :])


def test_dicom_series_sorted_by_position_with_hu(tmp_path):
    hu, _, files = write_ct_series(tmp_path / "ct", slope=2.0, intercept=-1000.0)
    vol = read_volume(tmp_path / "ct")
    assert vol.modality == "CT" and vol.geometry.source_format == "dicom"
    assert np.array_equal(vol.voxels, hu.astype(np.float32))  # slope/intercept applied
    assert vol.geometry.spacing == pytest.approx(SPACING)
    assert vol.geometry.origin == pytest.approx(ORIGIN)
    assert [str(f) for f in files] == list(vol.geometry.source_files)
    assert np.array_equal(read_volume(files[5]).voxels, vol.voxels)  # any file of the series


def test_folder_with_two_series_opens_the_larger_and_says_so(tmp_path):
    write_ct_series(tmp_path / "ct", n=4, description="scout")
    hu, _, _ = write_ct_series(tmp_path / "ct" / "main", n=9)
    vol = read_volume(tmp_path / "ct")
    assert vol.voxels.shape[0] == 9 and np.array_equal(vol.voxels, hu.astype(np.int16))
    assert any("2 series" in n and "9 slices" in n for n in vol.notes)


def test_uneven_spacing_is_reported(tmp_path):
    write_ct_series(tmp_path / "ct", n=6, jitter={3: 0.4})
    vol = read_volume(tmp_path / "ct")
    assert any("uneven slice spacing" in n for n in vol.notes)


def test_dicom_seg_round_trip_references_the_series(tmp_path):
    import highdicom as hd
    import pydicom

    _, msk, files = write_ct_series(tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    labels = msk.astype(np.uint8) * 2
    labels[7, 5:10, 5:10] = 5
    out = write_mask_like(labels, vol, tmp_path / "seg.dcm", {2: "spleen"})
    seg = hd.seg.segread(out)
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["spleen", "label 5"]
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    assert np.array_equal(pixels == 1, msk.astype(bool)) and (pixels == 2).sum() == 25
    assert np.array_equal(read_mask_like(out, vol.geometry), np.where(labels == 5, 2, labels // 2))


def test_geometry_survives_a_dict_round_trip(tmp_path):
    write_ct_nifti(tmp_path / "a.nii.gz", theta=0.1)
    geo = read_volume(tmp_path / "a.nii.gz").geometry
    assert Geometry.from_dict(geo.to_dict()) == geo


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_dicom_input_gives_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "empty")
    assert "no DICOM image" in _one_line(e)
    write_ct_series(tmp_path / "gap", n=6, skip=(2, 3))
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "gap")
    assert "missing slices" in _one_line(e)
    _, _, files = write_ct_series(tmp_path / "cut", n=4)
    files[1].write_bytes(files[1].read_bytes()[:-5000])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "cut")
    assert files[1].name in _one_line(e) and "truncated" in str(e.value)
    write_ct_series(tmp_path / "twice", n=3)
    write_ct_series(tmp_path / "twice" / "again", n=3)
    for f in (tmp_path / "twice" / "again").iterdir():
        shutil.move(f, tmp_path / "twice" / f"b{f.name}")
    import pydicom

    uid = pydicom.dcmread(next((tmp_path / "twice").glob("IMG*"))).SeriesInstanceUID
    for f in (tmp_path / "twice").glob("bIMG*"):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(f)
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "twice")
    assert "4-D" in _one_line(e)


def test_4d_and_mismatched_masks_are_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.int16), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "t.nii.gz")
    assert "4-D" in _one_line(e) and "t.nii.gz" in str(e.value)
    write_ct_nifti(tmp_path / "scan.nii.gz")
    vol = read_volume(tmp_path / "scan.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((122, 101, 9), np.uint8), ct_affine_ras()), tmp_path / "m.nii"
    )
    with pytest.raises(InputError) as e:
        read_mask_like(tmp_path / "m.nii", vol.geometry)
    assert (
        "9x101x122" in _one_line(e)
        and "10x101x122" in str(e.value)
        and "0.8 x 0.7 x 2.5" in str(e.value)
    )
    with pytest.raises(InputError) as e:
        write_mask_like(np.zeros((3, 3, 3), np.uint8), vol, tmp_path / "bad.nii.gz")
    assert "3x3x3" in _one_line(e) and not (tmp_path / "bad.nii.gz").exists()
    (tmp_path / "broken.nii.gz").write_bytes((tmp_path / "scan.nii.gz").read_bytes()[:300])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "broken.nii.gz")
    assert "broken.nii.gz" in _one_line(e)


def test_failed_write_keeps_the_saved_file(tmp_path):
    write_ct_nifti(tmp_path / "scan.nii.gz")
    vol = read_volume(tmp_path / "scan.nii.gz")
    _, msk = ct_spleen()
    out = write_mask_like(msk, vol, tmp_path / "mask.nii.gz")
    before = out.read_bytes()
    with pytest.raises(InputError):
        write_mask_like(msk[:3], vol, out)
    with pytest.raises(InputError) as e:
        write_mask_like(msk, vol, tmp_path / "seg.dcm")
    assert "DICOM source" in _one_line(e)
    assert out.read_bytes() == before and not (tmp_path / "seg.dcm").exists()


def test_cli_pairs_read_volumes_with_their_masks(tmp_path):
    from casam.io import read_pairs

    hu, msk, _ = write_ct_series(tmp_path / "ct")
    vol = read_volume(tmp_path / "ct")
    write_mask_like(msk, vol, tmp_path / "ct_seg.nii.gz")
    write_mask_like(msk, vol, tmp_path / "seg.dcm")
    write_ct_nifti(tmp_path / "scan.nii.gz", theta=0.2)
    write_ct_nifti(tmp_path / "mask.nii.gz", theta=0.2, mask=True)
    for images, masks in (
        ("ct", "ct_seg.nii.gz"),
        ("ct", "seg.dcm"),
        ("scan.nii.gz", "mask.nii.gz"),
    ):
        pairs, skipped = read_pairs([tmp_path / images], [tmp_path / masks])
        assert skipped == 0 and len(pairs) == len(hu)
        assert np.array_equal(np.stack([p.image for p in pairs]), hu)
        assert np.array_equal(np.stack([p.mask for p in pairs]), msk.astype(bool))
    with pytest.raises(InputError) as e:
        read_pairs([tmp_path / "scan.nii.gz"], [tmp_path / "ct_seg.nii.gz"])
    assert "not on the grid" in _one_line(e) and "scan.nii.gz" in str(e.value)


def test_cli_refuses_bad_volume_input_in_one_line(tmp_path, capsys):
    from casam.cli import main

    np.save(tmp_path / "slice.npy", np.zeros((20, 20), np.int16))
    write_ct_nifti(tmp_path / "scan.nii.gz")
    write_ct_series(tmp_path / "gap", n=5, skip=(2,))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    box = ["--box", "1", "1", "9", "9"]
    cases = [
        (["segment", tmp_path / "slice.npy", *box, "--out", tmp_path / "m.nii.gz"], "volume IMAGE"),
        (["segment", tmp_path / "scan.nii.gz", "--slice", 2, *box, "--out", tmp_path / "m.dcm"],
         "DICOM source"),
        (["segment", tmp_path / "gap", "--slice", 1, *box, "--out", tmp_path / "m.nii.gz"],
         "missing slices"),
        (["route", tmp_path / "empty"], "has no"),
    ]  # fmt: skip
    for argv, needle in cases:
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (argv, err)
    assert not list(tmp_path.glob("m.*"))
