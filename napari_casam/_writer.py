"""npe2 writer: a Labels layer saved with the geometry of the image it was drawn on.

``.nii.gz``/``.nii``/``.nrrd``/``.mha`` keep the source's affine and voxel grid; ``.dcm``
writes a DICOM SEG referencing the source series. The geometry comes from the layer's
metadata (set by the reader and by the dock), or else from the one open image with that grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from casam.errors import InputError
from casam.volumes import Geometry, write_mask_like
from napari_casam._volume_layers import geometry_of


def _from_open_images(
    shape: tuple[int, ...], scale: Any, meta: dict[str, Any] | None
) -> Geometry | None:
    """The geometry of the image the dock linked this layer to, or of the one open image
    with the layer's shape and scale."""
    try:
        import napari
    except ImportError:
        return None
    from napari_casam._prompts import LINK, TOKEN

    viewer = napari.current_viewer()
    if viewer is None:
        return None
    link = (meta or {}).get(LINK)
    for layer in viewer.layers:
        geo = geometry_of(getattr(layer, "metadata", None))
        if link and geo is not None and layer.metadata.get(TOKEN) == link and geo.shape == shape:
            return geo
    found = []
    for layer in viewer.layers:
        geo = geometry_of(getattr(layer, "metadata", None))
        if geo is not None and geo.shape == tuple(shape) and geo not in found:
            if scale is None or np.allclose(layer.scale, scale):
                found.append(geo)
    return found[0] if len(found) == 1 else None


def geometry_for(data: Any, attributes: dict[str, Any]) -> Geometry:
    """The geometry a Labels layer should be saved with, or a clear InputError."""
    geo = geometry_of(attributes.get("metadata"))
    shape = tuple(np.shape(data))
    if geo is None:
        geo = _from_open_images(shape, attributes.get("scale"), attributes.get("metadata"))
    if geo is None:
        raise InputError(
            f"the labels layer ({'x'.join(map(str, shape))}) is not tied to a volume opened "
            "with napari-casam; open the scan with napari-casam and draw on a labels layer "
            "of its shape"
        )
    return geo


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``path`` on its image's grid; returns the written path."""
    geo = geometry_for(data, attributes)
    names = {}
    for key, value in (attributes.get("metadata") or {}).get("label_names", {}).items():
        names[int(key)] = str(value)
    return [str(write_mask_like(np.asarray(data), geo, path, names or None))]
