"""Clinical test volumes made from the repository's real CT slices (tests/data/ct_spleen).

``write_ct_series`` writes a classic CT DICOM series with pydicom: shuffled file names,
InstanceNumber running against the slice order, non-unit spacing and a rescale slope/intercept.
``write_ct_nifti`` writes the same voxels as a NIfTI with an oblique, non-trivial affine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
SPACING = (2.5, 0.7, 0.8)  # (z, y, x) mm
ORIGIN = (-40.0, -30.0, 100.0)  # LPS (x, y, z) mm of voxel (0, 0, 0)


def ct_spleen(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` real CT spleen slices (z, y, x) int16 HU and their 0/1 masks, LPS order."""
    import tifffile

    img = tifffile.imread(DATA / "ct_spleen" / "images.tif")[:n]
    msk = tifffile.imread(DATA / "ct_spleen" / "masks.tif")[:n]
    return img, msk


def _dataset(pixels: np.ndarray, k: int, uids: dict, slope: float, intercept: float) -> object:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Spleen", "CASAM-TEST"
    ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.AccessionNumber = "", "O", "1", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20261201", "120000", ""
    ds.SeriesNumber, ds.Manufacturer = uids.get("number", 1), "casam-tests"
    ds.SeriesDescription = uids.get("description", "CT spleen (tests)")
    ds.InstanceNumber = 1000 - k  # runs against the slice order on purpose
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    x, y, z = ORIGIN
    ds.ImagePositionPatient = [x, y, z + k * SPACING[0] + uids.get("jitter", {}).get(k, 0.0)]
    ds.PixelSpacing = [SPACING[1], SPACING[2]]
    ds.SliceThickness = SPACING[0]
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def write_ct_series(
    folder: Path,
    n: int = 10,
    slope: float = 1.0,
    intercept: float = -1024.0,
    skip: tuple[int, ...] = (),
    **uid_extra: object,
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Write ``n`` real CT slices as a DICOM series; returns (expected HU, mask, files by k)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    hu, msk = ct_spleen(n)
    stored = np.round((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    uids.update(uid_extra)
    names = np.random.default_rng(7).permutation(n)
    files = []
    for k in range(n):
        path = folder / f"IMG{names[k]:04d}.dcm"
        if k not in skip:
            _dataset(stored[k], k, uids, slope, intercept).save_as(path, enforce_file_format=True)
        files.append(path)
    expected = stored.astype(np.float64) * slope + intercept
    return expected, msk, files


def ct_affine_ras(theta: float = 0.0) -> np.ndarray:
    """A NIfTI (RAS) affine for ``write_ct_nifti``: spacing SPACING, rotated by ``theta`` rad."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([SPACING[2], SPACING[1], SPACING[0]])
    aff[:3, 3] = [12.5, -7.25, 31.0]
    return aff


def write_ct_nifti(path: Path, n: int = 10, theta: float = 0.0, mask: bool = False) -> np.ndarray:
    """The real slices (or masks) as a RAS-stored NIfTI; returns the array as stored (i, j, k)."""
    import nibabel as nib

    hu, msk = ct_spleen(n)
    vol = msk.astype(np.uint8) if mask else hu
    stored = np.ascontiguousarray(np.transpose(vol, (2, 1, 0))[::-1, ::-1, :])
    nib.save(nib.Nifti1Image(stored, ct_affine_ras(theta)), path)
    return stored


def write_mask_nifti(path: Path, mask: np.ndarray, theta: float = 0.0) -> None:
    """A label volume (z, y, x) stored as ``write_ct_nifti`` stores the scan (same affine)."""
    import nibabel as nib

    stored = np.ascontiguousarray(np.transpose(mask, (2, 1, 0))[::-1, ::-1, :])
    nib.save(nib.Nifti1Image(stored.astype(np.uint8), ct_affine_ras(theta)), path)
