"""Pure converters between napari layer data and the engine's arrays (numpy only, no viewer).

Conventions: a layer's data axes are ``(*leading, row, col)`` (plus a trailing channel axis
for RGB images). The two last spatial axes form the 2-D plane the engine segments; the
leading axes (slices, time, ...) select the plane, as a tuple of ints called ``index``.
Boxes are XYXY in pixels of the plane (x = column, y = row), as the engine expects; a napari
pixel ``i`` is centred on coordinate ``i``, which is the engine's pixel index too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Index = tuple[int, ...]


def spatial_shape(data_shape: Sequence[int], rgb: bool) -> tuple[int, ...]:
    """Shape of an image's spatial axes: ``data_shape`` without the channel axis of RGB."""
    return tuple(data_shape[:-1]) if rgb else tuple(data_shape)


def n_leading(data_shape: Sequence[int], rgb: bool) -> int:
    """Number of axes that select a 2-D plane (0 for a 2-D image, 1 for a volume)."""
    return len(spatial_shape(data_shape, rgb)) - 2


def plane(data: np.ndarray, index: Index) -> np.ndarray:
    """The 2-D image ``(H, W)`` or ``(H, W, C)`` at ``index`` as a numpy array."""
    return np.asarray(data[tuple(index)]) if index else np.asarray(data)


def plane_indices(leading: Sequence[int]) -> list[Index]:
    """Every plane index of an image whose leading axes have sizes ``leading``, in order."""
    return [tuple(int(i) for i in ix) for ix in np.ndindex(*leading)]


def index_from_point(point: Sequence[float], n_lead: int, shape: Sequence[int]) -> Index:
    """Plane index of a point in data coordinates (rounded, clipped to ``shape``)."""
    return tuple(int(np.clip(round(float(point[i])), 0, shape[i] - 1)) for i in range(n_lead))


def rectangle_to_box(
    vertices: np.ndarray, plane_shape: tuple[int, int] | None = None
) -> tuple[Index, np.ndarray | None]:
    """Convert one napari rectangle to ``(index, box)``.

    Parameters
    ----------
    vertices : (4, ndim) array
        A Shapes rectangle in data coordinates ``(*leading, row, col)``.
    plane_shape : (H, W), optional
        Clip the box to the plane; a box entirely outside it, or thinner than one
        pixel, gives ``None``.

    Returns
    -------
    index : tuple of int
        Rounded leading coordinates (empty for 2-D).
    box : (4,) float array or None
        XYXY in plane pixels.
    """
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(f"expected (n, ndim >= 2) vertices, got shape {v.shape}")
    index = tuple(int(round(c)) for c in v[0, :-2])
    rows, cols = v[:, -2], v[:, -1]
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=float)
    if plane_shape is not None:
        h, w = plane_shape
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return index, None
    return index, box


def mask_to_indices(
    mask: np.ndarray,
    index: Index = (),
    current: np.ndarray | None = None,
    preserve_existing: bool = True,
) -> tuple[np.ndarray, ...]:
    """Full-dimensional fancy indices of a 2-D mask on plane ``index``.

    The result feeds ``Labels.data_setitem`` (napari's undoable edit). With
    ``preserve_existing`` and the plane's ``current`` labels given, pixels that already carry
    a label are left alone, so a new mask never overwrites an object the user made or fixed.
    """
    m = np.asarray(mask, dtype=bool)
    if preserve_existing and current is not None:
        m = m & (np.asarray(current) == 0)
    rows, cols = np.nonzero(m)
    lead = tuple(np.full(rows.shape, i, dtype=np.intp) for i in index)
    return (*lead, rows, cols)


def annotated_indices(labels_data: np.ndarray, n_lead: int) -> list[Index]:
    """Plane indices of a Labels array that contain at least one nonzero pixel."""
    lab = np.asarray(labels_data)
    if n_lead == 0:
        return [()] if lab.any() else []
    flat = lab.reshape(*lab.shape[:n_lead], -1).any(axis=-1)
    return [tuple(int(i) for i in ix) for ix in np.argwhere(flat)]


def training_pairs(
    image_data: np.ndarray, labels_data: np.ndarray, rgb: bool
) -> tuple[list[np.ndarray], list[np.ndarray], list[Index]]:
    """Images and label images of every annotated plane, for ``casam.iter_learn_task``.

    Returns ``(images, masks, indices)``; each label value of a mask is one object.
    """
    shape = spatial_shape(image_data.shape, rgb)
    if tuple(labels_data.shape) != shape:
        raise ValueError(
            f"labels of shape {tuple(labels_data.shape)} do not match the image {shape}"
        )
    n_lead = len(shape) - 2
    indices = annotated_indices(labels_data, n_lead)
    images = [plane(image_data, ix) for ix in indices]
    masks = [plane(labels_data, ix) for ix in indices]
    return images, masks, indices


def interpolate_boxes(
    index_a: Index, box_a: Sequence[float], index_b: Index, box_b: Sequence[float]
) -> list[tuple[Index, np.ndarray]]:
    """Linearly interpolated boxes for every plane strictly between two boxed planes.

    The two indices must differ along exactly one leading axis (e.g. two slices of a
    volume). Returns ``[(index, box), ...]`` ordered from ``index_a`` towards ``index_b``.
    """
    a, b = np.asarray(index_a, dtype=int), np.asarray(index_b, dtype=int)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("interpolation needs two boxes on planes of the same volume")
    diff = np.flatnonzero(a != b)
    if diff.size != 1:
        raise ValueError("draw the two boxes on two different slices of the same stack")
    axis = int(diff[0])
    ba, bb = np.asarray(box_a, dtype=float), np.asarray(box_b, dtype=float)
    n = abs(int(b[axis]) - int(a[axis]))
    step = 1 if b[axis] > a[axis] else -1
    out = []
    for k in range(1, n):
        t = k / n
        ix = a.copy()
        ix[axis] += step * k
        out.append((tuple(int(i) for i in ix), (1 - t) * ba + t * bb))
    return out


def next_label(labels_data: np.ndarray) -> int:
    """Smallest label value greater than every value in use."""
    lab = np.asarray(labels_data)
    return int(lab.max()) + 1 if lab.size else 1
