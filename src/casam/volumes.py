"""Clinical volumes with their geometry: NIfTI, NRRD, MetaImage and DICOM series in, masks out.

Every volume is handed out in ONE orientation, LPS+ index order: ``voxels[z, y, x]`` where x
runs towards the patient's Left, y towards Posterior and z towards Superior. An axial slice
``voxels[k]`` is then shown as radiologists expect it (anterior at the top, the patient's left on
the screen's right). Reorienting only permutes and flips axes (SimpleITK ``DICOMOrient``); the
voxel grid is never resampled. An oblique volume keeps its grid and is flagged
``orientation approximate``. Masks are written back on the source's own grid and affine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from casam.errors import InputError

if TYPE_CHECKING:
    import SimpleITK as sitk

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
SEG_SUFFIXES = (".dcm",)
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
"""CT display window in HU (width 400, level 40), used as napari ``contrast_limits``."""
OBLIQUE_TOLERANCE = 1e-3


def suffix_of(path: str | Path) -> str:
    """The lower-case suffix, ``.nii.gz`` counted as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


@dataclass(frozen=True)
class Geometry:
    """Where a ``(z, y, x)`` voxel grid sits in the patient, and how it was stored.

    ``spacing`` is (z, y, x) in mm; ``origin`` is the LPS position (x, y, z, mm) of voxel
    (0, 0, 0); ``direction`` is the row-major 3x3 matrix whose columns are the LPS directions of
    the x, y and z axes (ITK's convention; identity unless ``oblique``). ``native_*`` describe
    the grid as stored in the source file (ITK order: size and spacing x, y, z), so a mask can
    be written back with the very same affine. ``source_files`` lists a DICOM series' files in
    native slice order.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    source: str
    source_format: str
    native_orientation: str
    native_size: tuple[int, int, int]
    native_spacing: tuple[float, float, float]
    native_origin: tuple[float, float, float]
    native_direction: tuple[float, ...]
    oblique: bool = False
    source_files: tuple[str, ...] = ()

    @property
    def napari_translate(self) -> tuple[float, float, float]:
        """The origin in napari's (z, y, x) world order, mm."""
        x, y, z = self.origin
        return (z, y, x)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping (x, y, z) voxel indices of the LPS-ordered grid to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing[::-1])
        a[:3, 3] = self.origin
        return a

    def describe(self) -> str:
        """Shape and spacing in one phrase, for messages."""
        sz, sy, sx = self.spacing
        return f"{'x'.join(map(str, self.shape))} voxels of {sx:.4g} x {sy:.4g} x {sz:.4g} mm"

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (for napari layer metadata and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        """The inverse of ``to_dict``."""
        tup = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in d.items()}
        return cls(**tup)


@dataclass
class Volume:
    """A volume in LPS+ index order: ``voxels`` (z, y, x), its ``geometry`` and what to tell."""

    voxels: np.ndarray
    geometry: Geometry
    modality: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT"


def _sitk() -> Any:
    import SimpleITK

    return SimpleITK


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and "Exception thrown" not in line and not line.startswith(("/", "itk::")):
            return line[:120]
    return type(e).__name__


def _squeeze_to_3d(img: sitk.Image, path: Path) -> sitk.Image:
    sitk = _sitk()
    size = img.GetSize()
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path} holds {img.GetNumberOfComponentsPerPixel()} values per voxel "
            "(colour or vector image); give a scalar volume"
        )
    if img.GetDimension() == 2:
        return sitk.JoinSeries(img)
    if img.GetDimension() == 4:
        if size[3] != 1:
            raise InputError(
                f"{path} is 4-D ({'x'.join(map(str, size))}: {size[3]} time points "
                "or volumes); give one 3-D volume (split it first)"
            )
        return img[:, :, :, 0]
    if img.GetDimension() != 3:
        raise InputError(f"{path} is {img.GetDimension()}-D; give a 3-D volume")
    return img


def _check_nifti_complete(path: Path) -> None:
    """SimpleITK pads a truncated NIfTI with zeros: check the data is all there first."""
    import gzip

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds on a broken header
        raise OSError(f"unreadable NIfTI header: {_first_line(e)}") from None
    shape = header.get_data_shape()
    need = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    if suffix_of(path) == ".nii":
        have = path.stat().st_size
    else:
        have = 0
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                have += len(chunk)
    if have < need:
        raise OSError(f"the file is truncated: {have} of {need} bytes")


def read_native(path: Path) -> sitk.Image:
    """One NIfTI/NRRD/MetaImage file as a 3-D SimpleITK image on its stored grid."""
    sitk = _sitk()
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        if suffix_of(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        img = sitk.ReadImage(str(path))
    except (RuntimeError, OSError, EOFError) as e:
        raise InputError(
            f"cannot read {path} ({_first_line(e)}); is it a complete {suffix_of(path)} file?"
        ) from None
    return _squeeze_to_3d(img, path)


def volume_from_native(
    img: sitk.Image, source: str, fmt: str, files: tuple[str, ...] = (), modality: str = ""
) -> Volume:
    """Reorient a native image to LPS+ index order (no resampling) and wrap it as a Volume."""
    sitk = _sitk()
    native_dir = img.GetDirection()
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(native_dir)
    lps = sitk.DICOMOrient(img, "LPS")
    direction = lps.GetDirection()
    oblique = bool(np.abs(np.asarray(direction) - np.eye(3).ravel()).max() > OBLIQUE_TOLERANCE)
    sx, sy, sz = lps.GetSpacing()
    geo = Geometry(
        shape=tuple(int(s) for s in lps.GetSize()[::-1]),
        spacing=(sz, sy, sx),
        origin=tuple(float(o) for o in lps.GetOrigin()),
        direction=tuple(float(d) for d in direction),
        source=source,
        source_format=fmt,
        native_orientation=code,
        native_size=tuple(int(s) for s in img.GetSize()),
        native_spacing=tuple(float(s) for s in img.GetSpacing()),
        native_origin=tuple(float(o) for o in img.GetOrigin()),
        native_direction=tuple(float(d) for d in native_dir),
        oblique=oblique,
        source_files=files,
    )
    voxels = sitk.GetArrayFromImage(lps)
    notes = []
    if oblique:
        notes.append(
            f"{source}: oblique volume, orientation approximate (grid kept, not resampled)"
        )
    if not modality and _looks_like_ct(voxels):
        modality = "CT"
    return Volume(voxels, geo, modality, notes)


def _looks_like_ct(voxels: np.ndarray) -> bool:
    """Air near -1000 and integer values: how a CT in HU looks when no header says so."""
    if not np.issubdtype(voxels.dtype, np.integer) or voxels.size == 0:
        return False
    lo, hi = np.percentile(voxels, [0.5, 99.5])
    return bool(-1100 <= lo <= -700 and hi > 0)


def is_volume_path(path: str | Path) -> bool:
    """A volume file by suffix, or a DICOM file/folder (checked cheaply)."""
    p = Path(path)
    if suffix_of(p) in VOLUME_SUFFIXES:
        return True
    from casam import dicom

    return dicom.looks_like_dicom(p)


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI/NRRD/MetaImage file, a DICOM series folder or any file of a series.

    Raises ``InputError`` (one line) for anything unusable; nothing is half-read.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist")
    sfx = suffix_of(p)
    if p.is_file() and sfx in VOLUME_SUFFIXES:
        fmt = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd"}.get(
            sfx, "mha"
        )
        return volume_from_native(read_native(p), str(p), fmt)
    from casam import dicom

    return dicom.read_series(p)


def to_native_array(mask: np.ndarray, geo: Geometry) -> tuple[np.ndarray, sitk.Image]:
    """A (z, y, x) mask on the LPS grid of ``geo`` -> (native (k, j, i) array, native image)."""
    sitk = _sitk()
    m = np.asarray(mask)
    if m.shape != geo.shape:
        raise InputError(
            f"the mask is {'x'.join(map(str, m.shape))} voxels but its image {geo.source} is "
            f"{geo.describe()}; they must match voxel for voxel (nothing is resampled)"
        )
    img = sitk.GetImageFromArray(np.ascontiguousarray(m))
    img.SetSpacing(geo.spacing[::-1])
    img.SetOrigin(geo.origin)
    img.SetDirection(geo.direction)
    native = sitk.DICOMOrient(img, geo.native_orientation)
    if tuple(native.GetSize()) != geo.native_size:
        raise InputError(f"cannot map the mask back onto the grid of {geo.source}")
    native.SetSpacing(geo.native_spacing)
    native.SetOrigin(geo.native_origin)
    native.SetDirection(geo.native_direction)
    return sitk.GetArrayFromImage(native), native


def from_native_array(native: np.ndarray, geo: Geometry) -> np.ndarray:
    """A (k, j, i) array on the source's stored grid -> (z, y, x) on ``geo``'s LPS grid."""
    sitk = _sitk()
    a = np.asarray(native)
    if a.shape != geo.native_size[::-1]:
        raise InputError(
            f"a {'x'.join(map(str, a.shape))} array does not fit the grid of {geo.source} "
            f"({geo.describe()})"
        )
    img = sitk.GetImageFromArray(np.ascontiguousarray(a))
    img.SetSpacing(geo.native_spacing)
    img.SetOrigin(geo.native_origin)
    img.SetDirection(geo.native_direction)
    return sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))


def _mask_dtype(mask: np.ndarray) -> np.dtype:
    m = np.asarray(mask)
    if m.dtype == bool or m.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(m.min()), int(m.max())
    if lo < 0:
        raise InputError(f"mask labels must be >= 0 (found {lo})")
    return np.dtype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32)


def write_mask_like(
    mask: np.ndarray, source: Volume | Geometry, path: str | Path, label_names: dict | None = None
) -> Path:
    """Write a (z, y, x) label mask on the grid and affine of its source image.

    ``.nii``/``.nii.gz``/``.nrrd``/``.mha``/``.mhd`` for any source; ``.dcm`` writes a DICOM SEG
    (source must be a DICOM series; ``label_names`` maps label values to segment names). The
    file appears atomically: an existing file is replaced only by a complete one.
    """
    geo = source.geometry if isinstance(source, Volume) else source
    p = Path(path).expanduser()
    sfx = suffix_of(p)
    if not p.parent.is_dir():
        raise InputError(f"cannot write {p}: folder {p.parent} does not exist")
    if sfx in SEG_SUFFIXES:
        from casam import dicom_seg

        return dicom_seg.write_seg(mask, geo, p, label_names)
    if sfx not in MASK_SUFFIXES:
        raise InputError(f"cannot write {p}: use one of {' '.join(MASK_SUFFIXES + SEG_SUFFIXES)}")
    m = np.asarray(mask)
    _, native = to_native_array(m.astype(_mask_dtype(m), copy=False), geo)
    return write_atomically(
        p, lambda tmp: _sitk().WriteImage(native, str(tmp), useCompression=sfx != ".nii")
    )


def write_atomically(path: Path, write: Callable[[Path], Any], prefix: str = "") -> Path:
    """Run ``write(tmp)`` on a hidden file beside ``path``, then move it into place: an
    existing file is replaced only by a complete one, and a failed write leaves no trace."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix_of(path)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
        raise InputError(f"{prefix}cannot write {path} ({reason})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_mask_like(path: str | Path, geo: Geometry, what: str = "mask") -> np.ndarray:
    """A label file (NIfTI/NRRD/MetaImage, or DICOM SEG) as a (z, y, x) array on ``geo``'s grid.

    The mask must lie on the same grid as its image (same size, spacing, origin and direction
    within 1e-3 mm); otherwise ``InputError`` names both shapes and spacings.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    from casam import dicom_seg

    if dicom_seg.is_seg(p):
        return dicom_seg.read_seg_like(p, geo)
    mvol = read_volume(p)
    check_same_grid(mvol.geometry, geo, what)
    return mvol.voxels


def check_same_grid(mask: Geometry, image: Geometry, what: str = "mask") -> None:
    """Refuse (one line, both grids named) a mask whose grid is not the image's."""
    same = mask.shape == image.shape and np.allclose(mask.spacing, image.spacing, atol=1e-3)
    same = same and np.allclose(mask.origin, image.origin, atol=1e-2)
    same = same and np.allclose(mask.direction, image.direction, atol=1e-3)
    if not same:
        raise InputError(
            f"{what} {mask.source} ({mask.describe()}, origin {_fmt(mask.origin)}) is not on the "
            f"grid of {image.source} ({image.describe()}, origin {_fmt(image.origin)}); "
            "resample one onto the other first (nothing is resampled here)"
        )


def _fmt(xyz: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in xyz) + ")"


def with_source(geo: Geometry, source: str) -> Geometry:
    """The same geometry, reported under another name."""
    return replace(geo, source=source)
