"""DICOM series in (pydicom): find the series, sort its slices along the normal, apply HU.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
the two ImageOrientationPatient vectors), never by file name or InstanceNumber.
RescaleSlope/RescaleIntercept are applied (CT in HU). A gap of 1.5 slice spacings or more is a
missing slice (refused); smaller unevenness is reported and the mean spacing used. Two slices
at one position (4-D or repeated acquisitions) and multi-frame (enhanced) files are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from casam.errors import InputError

MAX_FILES = 20000
UNEVEN_TOLERANCE = 0.01
IMAGE_SKIP_MODALITIES = ("SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO")


@dataclass
class Slice:
    path: Path
    header: Any


def _dcmread(path: Path, headers_only: bool) -> Any:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=headers_only)


def header_or_none(path: Path) -> Any:
    """The DICOM header of ``path`` without pixels, or None if it is not DICOM."""
    from pydicom.errors import InvalidDicomError

    try:
        return _dcmread(path, headers_only=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _candidate_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) > MAX_FILES:
        raise InputError(f"{folder} holds {len(files)} files; give the folder of one series")
    return files


def looks_like_dicom(path: Path) -> bool:
    """Cheap test: a file with a DICOM header, or a folder whose first files include one."""
    if path.is_file():
        return header_or_none(path) is not None
    if path.is_dir():
        return any(header_or_none(p) is not None for p in _candidate_files(path)[:8])
    return False


def _is_image(ds: Any) -> bool:
    return "Rows" in ds and str(ds.get("Modality", "")) not in IMAGE_SKIP_MODALITIES


def scan(path: Path) -> tuple[dict[str, list[Slice]], str | None]:
    """Image slices grouped by SeriesInstanceUID, and the series of ``path`` if it is a file."""
    if path.is_file():
        ds = header_or_none(path)
        if ds is None:
            raise InputError(f"{path} is not a DICOM file (and not .nii/.nrrd/.mha)")
        if not _is_image(ds):
            raise InputError(f"{path} is a DICOM {ds.get('Modality', '')} object, not an image")
        folder, wanted = path.parent, str(ds.get("SeriesInstanceUID", ""))
    else:
        folder, wanted = path, None
    series: dict[str, list[Slice]] = {}
    for f in _candidate_files(folder):
        ds = header_or_none(f)
        if ds is not None and _is_image(ds):
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(Slice(f, ds))
    if not series:
        raise InputError(f"folder {folder} holds no DICOM image files")
    return series, wanted


def choose_series(series: dict[str, list[Slice]], wanted: str | None) -> tuple[str, list[str]]:
    """The series to open (``wanted`` or the one with most slices) and notes about the choice."""
    if wanted is not None:
        return wanted, []
    uid = max(series, key=lambda u: (len(series[u]), u))
    notes = []
    if len(series) > 1:
        desc = str(series[uid][0].header.get("SeriesDescription", "")) or uid
        others = ", ".join(str(len(v)) for u, v in series.items() if u != uid)
        notes.append(
            f"the folder holds {len(series)} series; opened the one with the most slices, "
            f"'{desc}' ({len(series[uid])} slices; others: {others} slices)"
        )
    return uid, notes


def _vector(ds: Any, key: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(key)
    if value is None or len(value) != n:
        raise InputError(f"{path} has no valid {key}; cannot place the slice in the patient")
    return np.asarray([float(v) for v in value])


def _check_frames(slices: Iterable[Slice]) -> None:
    for s in slices:
        frames = int(s.header.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputError(
                f"{s.path} is a multi-frame (enhanced) DICOM with {frames} frames; this reader "
                "takes classic one-slice-per-file series: convert it (e.g. dcm2niix to NIfTI)"
            )


def sort_slices(slices: list[Slice]) -> tuple[list[Slice], np.ndarray, np.ndarray]:
    """Slices sorted along the normal; returns (slices, positions along the normal mm, IOP)."""
    _check_frames(slices)
    iop = _vector(slices[0].header, "ImageOrientationPatient", 6, slices[0].path)
    for s in slices[1:]:
        if not np.allclose(_vector(s.header, "ImageOrientationPatient", 6, s.path), iop, atol=1e-4):
            raise InputError(
                f"{s.path} is tilted differently from {slices[0].path}; one series "
                "must share one slice orientation"
            )
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray(
        [_vector(s.header, "ImagePositionPatient", 3, s.path) @ normal for s in slices]
    )
    order = np.argsort(pos, kind="stable")
    slices, pos = [slices[k] for k in order], pos[order]
    same = np.flatnonzero(np.diff(pos) < 1e-3)
    if same.size:
        a, b = slices[same[0]].path, slices[same[0] + 1].path
        raise InputError(
            f"{a} and {b} lie at the same position ({pos[same[0]]:.4g} mm): a 4-D (time) or "
            "repeated acquisition; give one 3-D series"
        )
    return slices, pos, iop


def slice_spacing(slices: list[Slice], pos: np.ndarray) -> tuple[float, list[str]]:
    """Spacing along the normal (mm): refuse missing slices, report uneven spacing."""
    if len(pos) < 2:
        return float(slices[0].header.get("SliceThickness", 1.0) or 1.0), []
    gaps = np.diff(pos)
    med = float(np.median(gaps))
    big = np.flatnonzero(gaps > 1.5 * med)
    if big.size:
        k = int(big[0])
        raise InputError(
            f"the series has missing slices: {gaps[k]:.4g} mm between {slices[k].path.name} and "
            f"{slices[k + 1].path.name} where slices are {med:.4g} mm apart; give the whole series"
        )
    mean = float((pos[-1] - pos[0]) / (len(pos) - 1))
    notes = []
    if gaps.max() - gaps.min() > UNEVEN_TOLERANCE * med:
        notes.append(
            f"uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm); using the mean "
            f"{mean:.4g} mm, so positions along the slice normal are approximate"
        )
    return mean, notes


def read_pixels(slices: list[Slice]) -> np.ndarray:
    """The (n, rows, cols) voxels with RescaleSlope/Intercept applied (int16 when exact)."""
    planes = []
    for s in slices:
        try:
            ds = _dcmread(s.path, headers_only=False)
            a = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - pydicom and its decoders raise many kinds
            reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
            raise InputError(
                f"cannot read the pixels of {s.path} ({reason}); is the file truncated?"
            ) from None
        if a.ndim != 2:
            raise InputError(f"{s.path} holds a {a.shape} pixel array; give grey-level slices")
        if planes and a.shape != planes[0][0].shape:
            raise InputError(
                f"{s.path} is {a.shape[0]}x{a.shape[1]} but {slices[0].path} is "
                f"{planes[0][0].shape[0]}x{planes[0][0].shape[1]}"
            )
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        planes.append((a, slope, intercept))
    exact = all(sl == 1.0 and ic == int(ic) for _, sl, ic in planes)
    if exact:
        vol = np.stack([a.astype(np.int32) + int(ic) for a, _, ic in planes])
        info = np.iinfo(np.int16)
        if vol.min() >= info.min and vol.max() <= info.max:
            return vol.astype(np.int16)
        return vol
    return np.stack([a.astype(np.float32) * sl + ic for a, sl, ic in planes]).astype(np.float32)


def read_series(path: Path) -> Any:
    """A DICOM folder or file as a ``casam.volumes.Volume`` in LPS+ index order."""
    from casam.volumes import _sitk, volume_from_native

    series, wanted = scan(path)
    uid, notes = choose_series(series, wanted)
    slices, pos, iop = sort_slices(series[uid])
    dz, spacing_notes = slice_spacing(slices, pos)
    voxels = read_pixels(slices)
    first = slices[0].header
    dy, dx = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    sitk = _sitk()
    img = sitk.GetImageFromArray(voxels)
    img.SetSpacing((dx, dy, dz))
    img.SetOrigin(tuple(_vector(first, "ImagePositionPatient", 3, slices[0].path)))
    normal = np.cross(iop[:3], iop[3:])
    img.SetDirection(tuple(np.stack([iop[:3], iop[3:], normal], axis=1).ravel()))
    vol = volume_from_native(
        img, str(path), "dicom", tuple(str(s.path) for s in slices), str(first.get("Modality", ""))
    )
    vol.notes[:0] = notes + spacing_notes
    return vol
