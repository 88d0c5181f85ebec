"""Clinical volumes <-> napari layer data (pure functions, no viewer needed).

An image layer gets ``scale`` = voxel spacing (z, y, x, mm) and ``translate`` = the LPS origin
in (z, y, x) order, so every layer of one grid lines up voxel for voxel; its metadata carries
the geometry (``GEOMETRY_KEY``) that the writer and the dock's "save masks" need.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from casam.volumes import SOFT_TISSUE_WINDOW, Geometry, Volume

GEOMETRY_KEY = "casam_geometry"
NOTES_KEY = "casam_notes"
LayerData = tuple[Any, dict[str, Any], str]
LABEL_WORDS = re.compile(
    r"(^|[_\-. ])(seg|segmentation|mask|masks|label|labels|gt|annotation)s?($|[_\-. ])",
    re.IGNORECASE,
)
MAX_LABELS = 32
CT_WINDOWS = {
    "soft tissue": SOFT_TISSUE_WINDOW,
    "lung": (-1350.0, 150.0),
    "bone": (-500.0, 1300.0),
    "brain": (0.0, 80.0),
}
"""CT display presets in HU (contrast limits = level -/+ width / 2)."""


def layer_name(path: str | Path) -> str:
    """A short layer name: the file name without its volume suffix, or the folder name."""
    name = Path(path).name
    for sfx in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return name


def placement(geo: Geometry) -> dict[str, Any]:
    """The kwargs that put a layer on ``geo``'s grid: scale, translate and the geometry."""
    return {
        "scale": tuple(geo.spacing),
        "translate": geo.napari_translate,
        "metadata": {GEOMETRY_KEY: geo.to_dict()},
    }


def image_layer(vol: Volume, name: str) -> LayerData:
    """Image layer data: CT opens with the soft-tissue window, others with a 0.5-99.5 % range."""
    kwargs = placement(vol.geometry)
    kwargs["metadata"][NOTES_KEY] = list(vol.notes)
    kwargs.update(name=name, colormap="gray", contrast_limits=display_window(vol))
    return vol.voxels, kwargs, "image"


def labels_layer(mask: np.ndarray, geo: Geometry, name: str) -> LayerData:
    """Labels layer data on ``geo``'s grid (integer labels, 0 = background)."""
    kwargs = placement(geo)
    kwargs.update(name=name, opacity=0.5)
    return np.asarray(mask).astype(_label_dtype(mask), copy=False), kwargs, "labels"


def _label_dtype(mask: np.ndarray) -> np.dtype:
    m = np.asarray(mask)
    if m.dtype == bool:
        return np.dtype(np.uint8)
    return m.dtype if np.issubdtype(m.dtype, np.integer) else np.dtype(np.int32)


def display_window(vol: Volume) -> tuple[float, float]:
    """Contrast limits for display only (what the model sees is the engine's windowing)."""
    if vol.is_ct:
        return CT_WINDOWS["soft tissue"]
    lo, hi = (float(v) for v in np.percentile(vol.voxels, [0.5, 99.5]))
    return (lo, hi if hi > lo else lo + 1.0)


def looks_like_labels(path: str | Path, vol: Volume) -> bool:
    """A mask file: integer voxels >= 0, not a CT, and named like one (seg, mask, label...) or
    holding at most ``MAX_LABELS`` distinct values below 256."""
    v = vol.voxels
    if vol.is_ct or not np.issubdtype(v.dtype, np.integer) or v.size == 0 or int(v.min()) < 0:
        return False
    if LABEL_WORDS.search(layer_name(path)):
        return True
    return (
        int(v.max()) < 256
        and np.unique(v.ravel()[:: max(1, v.size // 1_000_000)]).size <= MAX_LABELS
    )


def geometry_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The geometry entry of an image's metadata, to give a layer drawn on it ({} if none)."""
    d = (meta or {}).get(GEOMETRY_KEY)
    return {GEOMETRY_KEY: d} if d is not None else {}


def geometry_of(meta: dict[str, Any] | None) -> Geometry | None:
    """The geometry kept in a layer's metadata, if any."""
    d = (meta or {}).get(GEOMETRY_KEY)
    if isinstance(d, Geometry):
        return d
    return Geometry.from_dict(d) if isinstance(d, dict) else None


def sibling_masks(path: Path) -> list[Path]:
    """Segmentation files next to a volume file: ``<stem>_seg``/``_mask``/``_label(s)`` and the
    ``<x>_image`` -> ``<x>_label`` convention, any volume suffix."""
    if not path.is_file():
        return []
    stem = layer_name(path)
    stems = {f"{stem}{sep}{w}" for sep in "_-." for w in ("seg", "mask", "label", "labels")}
    if stem.endswith("_image"):
        stems |= {stem[:-6] + "_label", stem[:-6] + "_seg", stem[:-6] + "_mask"}
    found = [
        p
        for p in sorted(path.parent.iterdir())
        if p != path and p.is_file() and layer_name(p) in stems and layer_name(p) != p.name
    ]
    return found
