"""The layers the dock adds for an image: a Shapes layer of box prompts and a Labels layer.

They are found again by metadata (``casam_role``, ``casam_image``), so reopening the dock or
renaming the image keeps them linked.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_casam._layers import spatial_shape

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Shapes

ROLE = "casam_role"
LINK = "casam_image"
TOKEN = "casam_id"
PROMPTS = "prompts"
MASKS = "masks"

BOX_COLOR = "#ffd400"


def token(image: Image) -> str:
    """A stable id of an image layer, stored in its metadata."""
    tok = image.metadata.get(TOKEN)
    if not tok:
        tok = uuid.uuid4().hex[:12]
        image.metadata[TOKEN] = tok
    return tok


def role(layer: Any) -> str | None:
    return getattr(layer, "metadata", {}).get(ROLE)


def find_linked(viewer: napari.viewer.Viewer, image: Image, which: str) -> Any:
    tok = image.metadata.get(TOKEN)
    if not tok:
        return None
    for layer in viewer.layers:
        md = layer.metadata
        if md.get(ROLE) == which and md.get(LINK) == tok:
            return layer
    return None


def image_of(viewer: napari.viewer.Viewer, layer: Any) -> Image | None:
    """The image a prompts/masks layer belongs to (None if it is gone)."""
    tok = getattr(layer, "metadata", {}).get(LINK)
    if not tok:
        return None
    for other in viewer.layers:
        if other.metadata.get(TOKEN) == tok and role(other) is None:
            return other
    return None


def make_masks(viewer: napari.viewer.Viewer, image: Image) -> Labels:
    """Add an empty Labels layer aligned with ``image``."""
    shape = spatial_shape(image.data.shape, image.rgb)
    labels = viewer.add_labels(
        np.zeros(shape, dtype=np.uint16),
        name=f"{image.name} masks",
        scale=image.scale,
        translate=image.translate,
        opacity=0.55,
        metadata={ROLE: MASKS, LINK: token(image)},
    )
    return labels


def make_prompts(viewer: napari.viewer.Viewer, image: Image) -> Shapes:
    """Add an empty Shapes layer for box prompts, aligned with ``image``, in rectangle mode."""
    h, w = spatial_shape(image.data.shape, image.rgb)[-2:]
    shapes = viewer.add_shapes(
        ndim=image.ndim,
        name=f"{image.name} boxes",
        scale=image.scale,
        translate=image.translate,
        edge_color=BOX_COLOR,
        face_color="transparent",
        edge_width=max(1.0, 0.004 * max(h, w)),
        features={"box_id": np.zeros(0, dtype=int), "label": np.zeros(0, dtype=int)},
        feature_defaults={"box_id": 0, "label": 0},
        metadata={ROLE: PROMPTS, LINK: token(image)},
    )
    shapes.current_edge_color = BOX_COLOR
    shapes.current_face_color = "transparent"
    shapes.mode = "add_rectangle"
    return shapes
