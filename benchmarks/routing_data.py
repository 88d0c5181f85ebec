"""Data of the routing benchmark: 8 real tasks, a validation split, calibration augmentations
and an out-of-distribution set of 25+ images of kinds never learned.

Tasks: the six of ``datasets.DOMAIN_TASKS`` plus two views of the abdominal CT that no task
shows yet: coronal reformats labelled spleen and sagittal reformats labelled kidneys
(TotalSegmentator's reference labels 1 and 2+3; 3 mm isotropic volume, so the reformats need no
resampling). CT liver stays axial, so no two tasks share an image.

Splits: ``fit`` = at most ``max_train`` training slices (evenly spread, as quality.py), ``val`` =
the task's other training slices (tuning only), ``test`` = the task's fixed test split (by patient
for MR brain tumour and CT lung tumour: the test patient is never seen).

OOD: ``ood_test`` (reported): X-ray, ultrasound, fundus, colour and grayscale photographs,
astronomy, histology, documents, textures, a phantom, noise and flat images (38 images).
``ood_val`` (tuning only): other images and other noise seeds (15 images).
"""

from __future__ import annotations

import dataclasses

import datasets
import numpy as np
from _common import evenly

from casam.augment import augment_pair

EXTRA_TASKS = (("CT spleen coronal", "coronal", (1,)), ("CT kidney sagittal", "sagittal", (2, 3)))


@dataclasses.dataclass
class RTask:
    name: str
    kind: str  # "organ" or "lesion"
    fit: list
    val: list
    test: list
    split: str
    modality: str  # datasets.Task.modality: CT, MR, fluorescence microscopy


def _reformat_tasks(cache) -> list[datasets.Task]:
    ct = datasets.read_nifti_case(
        "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", cache, "example_ct"
    )
    out = []
    for name, plane, labels in EXTRA_TASKS:
        sl = datasets.volume_slices(ct, (plane,), labels=labels, reformat_step_mm=3.0)
        tr, te = datasets.block_split(sl, block=4)
        split = f"one case, {plane} reformats: blocks of 4 consecutive slices alternate train/test"
        out.append(datasets.Task(name, "CT", datasets._pairs(tr), datasets._pairs(te), split=split))
    return out


def routing_tasks(cache=None, max_train: int = 16, max_val: int = 8) -> list[RTask]:
    """The 8 tasks with fit / val / test splits (see the module docstring)."""
    base = {t.name: t for t in datasets.load_tasks(cache)}
    tasks = [base[n] for n in datasets.DOMAIN_TASKS] + _reformat_tasks(cache)
    out = []
    for t in tasks:
        fit = evenly(t.train, max_train)
        ids = {id(p[0]) for p in fit}
        val = evenly([p for p in t.train if id(p[0]) not in ids], max_val)
        kind = "lesion" if ("tumour" in t.name or "lesion" in t.name) else "organ"
        out.append(RTask(t.name, kind, fit, val, list(t.test), t.split, t.modality))
    return out


# ---- calibration augmentation: what changes between patients of one kind -------------------


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random variant of a slice: intensity window and gamma, noise, a small shift and scale,
    a left-right flip (p = 0.5). Same dtype and shape as ``image`` (float for integer inputs)."""
    return augment_pair(image, None, rng)[0]


def augmented(pairs, copies: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [augment(img, rng) for img, _ in pairs for _ in range(copies)]


def augmented_pairs(pairs, copies: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``augmented``'s images (the same ones for the same seed) with their masks moved along."""
    rng = np.random.default_rng(seed)
    return [augment_pair(img, np.asarray(m) > 0, rng) for img, m in pairs for _ in range(copies)]


# ---- out-of-distribution images ------------------------------------------------------------


def _synthetic(seed: int) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    g = np.linspace(0, 255, 256)
    return [
        ("noise", f"noise_gauss_{seed}", np.clip(rng.normal(128, 40, (256, 256)), 0, 255)),
        ("noise", f"noise_uniform_{seed}", rng.uniform(0, 255, (256, 256))),
        ("noise", f"noise_rgb_{seed}", rng.uniform(0, 255, (256, 256, 3))),
        # a constant image is refused by casam's input check: nearly flat (sensor noise)
        ("flat", f"flat_{seed}", 40.0 + 80 * (seed % 3) + rng.normal(0, 1.0, (256, 256))),
        ("flat", f"gradient_{seed}", np.tile(g if seed % 2 else g[::-1], (256, 1))),
    ]


TEST_SKIMAGE = (
    ("texture", "brick"),
    ("microscopy", "cell"),
    ("texture", "grass"),
    ("texture", "gravel"),
    ("photo", "horse"),
    ("document", "page"),
    ("document", "text"),
    ("photo", "clock"),
    ("pattern", "checkerboard"),
    ("photo", "colorwheel"),
    ("logo", "logo"),
    ("fundus", "microaneurysms"),
    ("phantom", "shepp_logan_phantom"),
)
VAL_SKIMAGE = (("photo", "cat"), ("texture", "binary_blobs"))


def _skimage(names) -> list[tuple[str, str, np.ndarray]]:
    import skimage.data

    out = []
    for kind, n in names:
        try:  # binary_blobs is random unless seeded: the same image every run
            img = getattr(skimage.data, n)(**({"rng": 0} if n == "binary_blobs" else {}))
        except Exception:  # a fetcher that needs the network: not offline, left out
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out.append((kind, n, img))
    return out


def _u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.max() <= 1.0:
        a = a * 255
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def ood_sets(cache=None) -> tuple[list[tuple[str, str, np.ndarray]], list]:
    """(test, val) lists of (kind, name, uint8 image); no overlap, no task image."""
    test = [
        (o.kind, o.name, o.image)
        for o in datasets.ood_images(cache, [k for k in datasets.OOD_KINDS if k != "nuclei"])
    ]
    test += _skimage(TEST_SKIMAGE) + _synthetic(0)
    val = _skimage(VAL_SKIMAGE) + _synthetic(1) + _synthetic(2)[:3]
    import skimage.data

    faces = skimage.data.lfw_subset()
    val += [("photo", f"lfw_face_{i}", faces[i]) for i in (0, 50, 100)]
    val.append(("photo", "cat_gray", skimage.data.cat().mean(axis=2)))
    blobs = skimage.data.binary_blobs(256, blob_size_fraction=0.05, volume_fraction=0.3, rng=1)
    val.append(("texture", "binary_blobs_small", blobs.astype(np.uint8) * 255))
    test = [(k, n, datasets.limit_size(_u8(im), None)[0]) for k, n, im in test]
    val = [(k, n, datasets.limit_size(_u8(im), None)[0]) for k, n, im in val]
    return test, val
