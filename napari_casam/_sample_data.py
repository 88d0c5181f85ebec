"""Sample data contributed through the manifest: real medical images with their ground truth.

The files live in ``napari_casam/sample_data/`` (see its README for where they come from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "sample_data"

LayerData = tuple[np.ndarray, dict[str, Any], str]


def _read(stem: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    image = tifffile.imread(DATA / f"{stem}_image.tif")
    masks = tifffile.imread(DATA / f"{stem}_masks.tif").astype(np.uint8)
    return image, masks


def _layers(stem: str, name: str, contrast: tuple[float, float], source: str) -> list[LayerData]:
    image, masks = _read(stem)
    meta = {"source": source}
    return [
        (
            image,
            {"name": name, "colormap": "gray", "contrast_limits": contrast, "metadata": meta},
            "image",
        ),
        (
            masks,
            {"name": f"{name} ground truth", "opacity": 0.5, "visible": False, "metadata": meta},
            "labels",
        ),
    ]


def ct_spleen() -> list[LayerData]:
    """29 consecutive axial slices (101 x 122, Hounsfield units) of an abdominal CT and the
    spleen mask, shown with an abdominal window (W 400 / L 40)."""
    return _layers(
        "ct_spleen",
        "CT abdomen",
        (-160.0, 240.0),
        "TotalSegmentator 2.18.0 test case example_ct_sm (spleen = label 1)",
    )


def mr_brain_tumour() -> list[LayerData]:
    """One axial MR slice (256 x 256) of a brain with a tumour and its tumour mask."""
    image, _ = _read("mr_brain_tumour")
    hi = float(np.percentile(image, 99.5))
    return _layers(
        "mr_brain_tumour",
        "MR brain",
        (0.0, hi),
        "pyradiomics 3.0.1 test case brain1, axial slice 16",
    )
