"""Reading images, masks and volumes from files; writing masks.

A PATH is a file or a folder (its supported files, sorted by name). 2-D files give one slice;
3-D ``.tif``/``.npy`` stacks are split along the first axis, ``.nii``/``.nii.gz``/``.nrrd``
volumes along their slice (last) axis. ``(H, W, 3|4)`` arrays are single RGB(A) images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casam.errors import InputError

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".nii", ".nii.gz", ".nrrd")


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def expand_paths(paths: Sequence[str | Path], what: str = "--images") -> list[Path]:
    """Files named directly, and the supported files of named folders (sorted by name)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
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
            if suffix_of(p) not in SUFFIXES:
                raise InputError(f"{what}: {p} is not a supported file ({' '.join(SUFFIXES)})")
            out.append(p)
        else:
            raise InputError(f"{what}: {p} does not exist")
    if not out:
        raise InputError(f"{what}: no files given")
    return out


def _is_rgb(a: np.ndarray) -> bool:
    return a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4


def _split(a: np.ndarray, path: Path, volume_axis_last: bool) -> list[np.ndarray]:
    if a.ndim == 2:
        return [np.ascontiguousarray(a.T) if volume_axis_last else a]
    if _is_rgb(a) and not volume_axis_last:
        return [a]
    if a.ndim == 3:
        if volume_axis_last:
            return [np.ascontiguousarray(a[:, :, k].T) for k in range(a.shape[2])]
        return [a[k] for k in range(a.shape[0])]
    if a.ndim == 4 and a.shape[-1] in (3, 4) and not volume_axis_last:
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
        if sfx in (".nii", ".nii.gz"):
            import nibabel as nib

            return np.asanyarray(nib.load(str(path)).dataobj)
        if sfx == ".nrrd":
            import nrrd

            data, _ = nrrd.read(str(path))
            return data
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
    return _split(a, path, suffix_of(path) in (".nii", ".nii.gz", ".nrrd"))


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
) -> tuple[list[Pair], int]:
    """Pair image and mask slices in sorted order; returns (pairs with foreground, n skipped)."""
    ipaths = expand_paths(images, "--images")
    mpaths = expand_paths(masks, "--masks")
    if len(ipaths) != len(mpaths):
        raise InputError(
            f"{len(ipaths)} image files but {len(mpaths)} mask files; give one mask file per "
            "image file"
        )
    pairs, skipped = [], 0
    for ip, mp in zip(ipaths, mpaths, strict=True):
        islices, mslices = read_slices(ip), read_slices(mp)
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


def atomic_write(p: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``p``, then rename it over ``p``: a failed
    or interrupted write leaves whatever was at ``p`` untouched."""
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp{suffix_of(p)}")
    try:
        write(tmp)
        os.replace(tmp, p)
    except OSError as e:
        raise InputError(f"--out: cannot write {p} ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write a 2-D binary mask atomically: PNG/JPG as 0/255, TIFF/NPY as 0/1 uint8."""
    p = Path(path).expanduser()
    sfx = suffix_of(p)
    m = np.asarray(mask, bool).astype(np.uint8)
    if not p.parent.is_dir():
        raise InputError(f"--out: folder {p.parent} does not exist")
    if sfx not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"):
        raise InputError(
            f"--out: cannot write {sfx or 'a file without suffix'}; use .png, .tif or .npy"
        )

    def write(tmp: Path) -> None:
        if sfx in (".png", ".jpg", ".jpeg"):
            import imageio.v3 as iio

            iio.imwrite(tmp, m * 255, extension=sfx)
        elif sfx in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, m, compression="zlib")
        else:
            with open(tmp, "wb") as f:
                np.save(f, m, allow_pickle=False)

    return atomic_write(p, write)
