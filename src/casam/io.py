"""Reading images, masks and volumes from files; writing masks.

A PATH is a file or a folder (its supported files, sorted by name); a folder of DICOM files is
one series. 2-D files give one slice; 3-D ``.tif``/``.npy`` stacks are split along the first
axis. Clinical volumes (``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` and DICOM
series) are read by ``casam.volumes`` in LPS+ order and split into their axial slices (the
first axis), exactly as the napari reader shows them. ``(H, W, 3|4)`` arrays are single RGB(A)
images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casam.errors import InputError
from casam.volumes import (
    MASK_SUFFIXES,
    SEG_SUFFIXES,
    VOLUME_SUFFIXES,
    Geometry,
    read_mask_like,
    read_volume,
    suffix_of,
    write_atomically,
    write_mask_like,
)

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", *VOLUME_SUFFIXES, ".dcm")


def is_volume(path: Path) -> bool:
    """A clinical volume: a volume file, a DICOM file (of a series) or a DICOM folder."""
    from casam.dicom import looks_like_dicom

    return suffix_of(path) in VOLUME_SUFFIXES or looks_like_dicom(path)


def expand_paths(paths: Sequence[str | Path], what: str = "--images") -> list[Path]:
    """Files named directly, and the supported files of named folders (sorted by name)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir() and _is_dicom_folder(p):
            out.append(p)
        elif p.is_dir():
            found = sorted(
                (
                    c
                    for c in p.iterdir()
                    if c.is_file() and not c.name.startswith(".") and suffix_of(c) in SUFFIXES
                ),
                key=lambda c: c.name,
            )
            if not found:
                raise InputError(f"{what}: folder {p} has no {'/'.join(SUFFIXES)} files")
            out.extend(found)
        elif p.is_file():
            if suffix_of(p) not in SUFFIXES and not is_volume(p):
                raise InputError(f"{what}: {p} is not a supported file ({' '.join(SUFFIXES)})")
            out.append(p)
        else:
            raise InputError(f"{what}: {p} does not exist")
    if not out:
        raise InputError(f"{what}: no files given")
    return out


def _is_dicom_folder(folder: Path) -> bool:
    """A folder without plain image files whose files are DICOM: one series, not a file list."""
    from casam.dicom import looks_like_dicom

    plain = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", *VOLUME_SUFFIXES)
    if any(c.is_file() and suffix_of(c) in plain for c in folder.iterdir()):
        return False
    return looks_like_dicom(folder)


def _is_rgb(a: np.ndarray) -> bool:
    return a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4


def _split(a: np.ndarray, path: Path) -> list[np.ndarray]:
    if a.ndim == 2 or _is_rgb(a):
        return [a]
    if a.ndim == 3 or (a.ndim == 4 and a.shape[-1] in (3, 4)):
        return [a[k] for k in range(a.shape[0])]
    raise InputError(
        f"{path} holds a {a.ndim}-D array of shape {a.shape}; give 2-D images or 3-D volumes"
    )


def read_array(path: Path) -> np.ndarray:
    """Read one file as an array (no splitting)."""
    sfx = suffix_of(path)
    try:
        if sfx == ".npy":
            return np.load(path, allow_pickle=False)
        if sfx in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if sfx in (".png", ".jpg", ".jpeg"):
            import imageio.v3 as iio

            return iio.imread(path)
        if is_volume(path):
            return read_volume(path).voxels
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader has its own exceptions
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise InputError(f"cannot read {path} ({reason}); is it a valid {sfx} file?") from None
    raise InputError(f"{path} is not a supported file ({' '.join(SUFFIXES)})")


def read_slices(path: Path) -> list[np.ndarray]:
    """The 2-D slices (or RGB images) held by one file."""
    a = read_array(path)
    if a.size == 0:
        raise InputError(f"{path} is empty (shape {a.shape})")
    if is_volume(path):
        return list(a)
    return _split(a, path)


def read_slices_with_geometry(path: Path) -> tuple[list[np.ndarray], Geometry | None]:
    """The slices of one file and, for a clinical volume, its geometry (else None)."""
    if is_volume(path):
        vol = read_volume(path)
        return list(vol.voxels), vol.geometry
    return read_slices(path), None


def check_slice_mask_target(path: str | Path, geo: Geometry | None) -> bool:
    """Whether ``--out`` asks for a volume mask; refuses one for a 2-D IMAGE or a DICOM SEG
    for a non-DICOM volume (before any work is done)."""
    sfx = suffix_of(Path(path))
    if sfx not in MASK_SUFFIXES + SEG_SUFFIXES:
        return False
    if geo is None:
        raise InputError(
            f"--out {path}: a volume mask takes its geometry from a volume IMAGE "
            "(NIfTI/NRRD/MHA/DICOM); for a 2-D image use .png, .tif or .npy"
        )
    if sfx in SEG_SUFFIXES and geo.source_format != "dicom":
        raise InputError(
            f"--out {path}: a DICOM SEG needs a DICOM source series, but {geo.source} is "
            f"{geo.source_format}; use .nii.gz or .nrrd"
        )
    return True


def write_slice_mask(path: str | Path, mask: np.ndarray, k: int, geo: Geometry | None) -> Path:
    """``casam segment --out``: a 2-D mask file, or (for a volume suffix) a volume mask on the
    image's grid, zero except slice ``k``, which holds ``mask`` (rows, cols)."""
    if not check_slice_mask_target(path, geo):
        return write_mask(path, mask)
    full = np.zeros(geo.shape, np.uint8)
    full[k] = np.asarray(mask, bool)
    return write_mask_like(full, geo, path)


def slice_names(path: Path, n: int) -> list[str]:
    return [str(path)] if n == 1 else [f"{path}[{k}]" for k in range(n)]


@dataclass
class Pair:
    name: str
    image: np.ndarray
    mask: np.ndarray


def mask_foreground(mask: np.ndarray, label: int | None) -> np.ndarray:
    """Foreground of a mask slice: nonzero (any channel), or equal to ``label``."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.max(axis=-1) if label is None else m[..., 0]
    return (m == label) if label is not None else (m != 0)


def read_pairs(
    images: Sequence[str | Path],
    masks: Sequence[str | Path],
    label: int | None = None,
    keep_empty: bool = False,
    what: tuple[str, str] = ("--images", "--masks"),
) -> tuple[list[Pair], int]:
    """Pair image and mask slices in sorted order; returns (pairs with foreground, n skipped).

    ``what`` names the image and mask lists in messages (the CLI's options, the dock's fields).
    """
    ipaths = expand_paths(images, what[0])
    mpaths = expand_paths(masks, what[1])
    if len(ipaths) != len(mpaths):
        raise InputError(
            f"{len(ipaths)} image files but {len(mpaths)} mask files; "
            "give one mask file per image file"
        )
    pairs, skipped = [], 0
    for ip, mp in zip(ipaths, mpaths, strict=True):
        islices, mslices = _pair_slices(ip, mp)
        if len(islices) != len(mslices):
            raise InputError(f"{ip} has {len(islices)} slices but its mask {mp} has {len(mslices)}")
        for name, img, msk in zip(slice_names(ip, len(islices)), islices, mslices, strict=True):
            if msk.shape[:2] != img.shape[:2]:
                raise InputError(
                    f"{name} is {img.shape[0]}x{img.shape[1]} but its mask ({mp}) is "
                    f"{msk.shape[0]}x{msk.shape[1]}; they must match"
                )
            fg = mask_foreground(msk, label)
            if not fg.any() and not keep_empty:
                skipped += 1
                continue
            pairs.append(Pair(name, img, fg))
    return pairs, skipped


def read_learning_pairs(
    images: Sequence[str | Path],
    masks: Sequence[str | Path],
    min_images: int,
    folds: int,
    label: int | None = None,
    extend: bool = False,
    what: tuple[str, str] = ("--images", "--masks"),
) -> tuple[list[Pair], int]:
    """The annotated slices ``casam learn`` (and the dock's "Learn from files…") trains on.

    Refuses, before any model work, files that hold no foreground at all and (unless
    ``extend``) fewer annotated slices than the ``folds``-fold threshold calibration needs.
    """
    pairs, skipped = read_pairs(images, masks, label, what=what)
    if not pairs:
        raise InputError(
            f"{what[1]}: all {skipped} mask slices are empty; there is nothing to learn from"
        )
    if len(pairs) < min_images and not extend:
        raise InputError(
            f"only {len(pairs)} annotated slice(s); a task needs at least {min_images} "
            f"for its {folds}-fold threshold calibration: annotate more slices"
        )
    return pairs, skipped


def _pair_slices(ip: Path, mp: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Slices of an image and its mask; a volume's mask must lie on its grid (or be its SEG)."""
    if is_volume(ip):
        vol = read_volume(ip)
        return list(vol.voxels), list(read_mask_like(mp, vol.geometry, f"mask of {ip}:"))
    return read_slices(ip), read_slices(mp)


PLAIN_MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


def check_mask_path(path: str | Path, volume: bool = False) -> Path:
    """The path a mask can be written to (known suffix, existing folder), or InputError.

    ``volume``: the source is a clinical volume, so a volume suffix (.nii.gz, .nrrd, .mha, .dcm)
    is allowed too.
    """
    p = Path(path).expanduser()
    sfx = suffix_of(p)
    allowed = PLAIN_MASK_SUFFIXES + ((MASK_SUFFIXES + SEG_SUFFIXES) if volume else ())
    if sfx not in allowed:
        raise InputError(
            f"--out: cannot write {sfx or 'a file without suffix'}; use .png, .tif or .npy "
            "(or .nii.gz, .nrrd, .mha, .dcm for a volume IMAGE)"
        )
    if not p.parent.is_dir():
        raise InputError(f"--out: folder {p.parent} does not exist")
    return p


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write a 2-D binary mask atomically: PNG/JPG as 0/255, TIFF/NPY as 0/1 uint8."""
    p = check_mask_path(path)
    sfx = suffix_of(p)
    m = np.asarray(mask, bool).astype(np.uint8)
    return write_atomically(p, lambda tmp: _write_2d(tmp, m, sfx), "--out: ")


def _write_2d(tmp: Path, m: np.ndarray, sfx: str) -> None:
    if sfx in (".png", ".jpg", ".jpeg"):
        import imageio.v3 as iio

        iio.imwrite(tmp, m * 255, extension=sfx)
    elif sfx in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(tmp, m, compression="zlib", photometric="minisblack")
    else:  # .npy (check_mask_path allows nothing else)
        with open(tmp, "wb") as f:
            np.save(f, m, allow_pickle=False)
