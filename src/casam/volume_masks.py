"""Writing a (Z, H, W) mask made on a volume's slices back in that volume's own geometry.

``casam.io.read_slices`` gives slice k of a NIfTI/NRRD volume as ``data[:, :, k].T`` (the
array's last axis is the slice axis) and of a TIFF/NPY stack as ``data[k]``. ``write_volume_mask``
undoes exactly that, so the mask lies voxel for voxel on the source: for NIfTI it keeps the
source's affine and header (qform/sform, voxel sizes), for NRRD its space, directions and
origin. TIFF/NPY masks are (Z, H, W) uint8 0/1. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from casam.errors import InputError
from casam.io import atomic_write, suffix_of

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".tif", ".tiff", ".npy")


def _to_source_layout(mask: np.ndarray, source: Path | None) -> np.ndarray:
    """(Z, H, W) -> the array layout of the source file (slice axis last for NIfTI/NRRD)."""
    if source is not None and suffix_of(source) in (".nii", ".nii.gz", ".nrrd"):
        return np.ascontiguousarray(mask.transpose(2, 1, 0))
    return mask


def _write(tmp: Path, sfx: str, m: np.ndarray, source: Path | None) -> None:
    if sfx in (".nii", ".nii.gz"):
        import nibabel as nib

        if source is not None and suffix_of(source) in (".nii", ".nii.gz"):
            src = nib.load(str(source))
            img = nib.Nifti1Image(m, src.affine, src.header.copy())
            img.set_data_dtype(np.uint8)
        else:
            img = nib.Nifti1Image(m, np.eye(4))
        nib.save(img, str(tmp))
    elif sfx == ".nrrd":
        import nrrd

        header = {}
        if source is not None and suffix_of(source) == ".nrrd":
            h = nrrd.read_header(str(source))
            header = {k: h[k] for k in ("space", "space directions", "space origin") if k in h}
        nrrd.write(str(tmp), m, header)
    elif sfx in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(tmp, m, compression="zlib")
    else:
        with open(tmp, "wb") as f:
            np.save(f, m, allow_pickle=False)


def write_volume_mask(path: str | Path, mask: np.ndarray, source: str | Path | None = None) -> Path:
    """Write a (Z, H, W) bool mask as uint8 0/1 in ``source``'s geometry (see module doc)."""
    p = Path(path).expanduser()
    sfx = suffix_of(p)
    if sfx not in VOLUME_SUFFIXES:
        raise InputError(
            f"--out: cannot write a 3-D mask as {sfx or 'a file without suffix'}; "
            "use .nii.gz, .nrrd, .tif or .npy"
        )
    if not p.parent.is_dir():
        raise InputError(f"--out: folder {p.parent} does not exist")
    src = Path(source) if source is not None else None
    m = _to_source_layout(np.asarray(mask, bool).astype(np.uint8), src)
    return atomic_write(p, lambda tmp: _write(tmp, sfx, m, src))
