"""The layers the dock adds for an image: a Shapes layer of box prompts and a Labels layer.

They are found again by metadata (``casam_role``, ``casam_image``), so reopening the dock or
renaming the image keeps them linked.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_casam._layers import Index, index_from_point, spatial_shape
from napari_casam._volume_layers import geometry_metadata

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
        metadata={ROLE: MASKS, LINK: token(image), **geometry_metadata(image.metadata)},
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


class ViewerLayers:
    """The model's view of a viewer's layers (the :class:`~napari_casam._model.Layers` protocol).

    napari hands plugin widgets a public-only proxy of the viewer, whose attributes are new
    proxy objects on every access; so layers are remembered by a token in their metadata and
    looked up again by iterating ``viewer.layers`` (which yields the layers themselves).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer

    def image(self, tok: str | None) -> Image | None:
        if not tok:
            return None
        return next(
            (
                ly
                for ly in self.viewer.layers
                if is_user_image(ly) and ly.metadata.get(TOKEN) == tok
            ),
            None,
        )

    def masks(self, image: Image | None) -> Labels | None:
        return find_linked(self.viewer, image, MASKS) if image is not None else None

    def prompts(self, image: Image | None) -> Shapes | None:
        return find_linked(self.viewer, image, PROMPTS) if image is not None else None

    def ensure_masks(self, image: Image) -> Labels:
        return self.masks(image) or make_masks(self.viewer, image)

    def token(self, image: Image) -> str:
        return token(image)

    def show_plane(self, image: Image, index: Index) -> None:
        """Move the view to plane ``index`` of ``image``."""
        _show_plane(self.viewer, image, index)

    def current_index(self, image: Image | None) -> Index:
        """Plane index of ``image`` on the slice in view (``()`` for a 2-D image)."""
        if image is None:
            return ()
        shape = spatial_shape(image.data.shape, image.rgb)
        n = len(shape) - 2
        if n <= 0:
            return ()
        point = image.world_to_data(self.viewer.dims.point)
        return index_from_point(point, n, shape)


def _show_plane(viewer: napari.viewer.Viewer, image: Image, index: Index) -> None:
    coords = np.zeros(image.ndim)
    coords[: len(index)] = index
    world = image.data_to_world(coords)
    offset = viewer.dims.ndim - image.ndim
    for i in range(len(index)):
        viewer.dims.set_point(offset + i, float(world[i]))


def is_user_image(layer: Any) -> bool:
    """An Image layer the user opened (not one the dock made)."""
    from napari.layers import Image

    return isinstance(layer, Image) and role(layer) is None
