"""Box prompts of a Shapes layer as plain data: ids, per-plane grouping, interpolation pairs.

Pure functions on arrays (no viewer, no Qt). A box's id lives in the layer's ``box_id``
feature (0 = not segmented yet) and the label it produced in ``label`` (-1 = none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_casam._layers import Index, rectangle_to_box


@dataclass
class PlaneBoxes:
    """The new boxes drawn on one plane, to segment in one call."""

    index: Index
    boxes: list[np.ndarray] = field(default_factory=list)
    """XYXY boxes in plane pixels."""
    ids: list[int] = field(default_factory=list)


@dataclass
class NewBoxes:
    """What :func:`group_new_boxes` decided for the rows of a Shapes layer."""

    ids: dict[int, int]
    """Row -> new box id, for every row that had none."""
    planes: list[PlaneBoxes]
    rejected: list[int]
    """Rows that are not rectangles inside the image (their label becomes -1)."""


def group_new_boxes(
    box_ids: np.ndarray,
    shape_types: Sequence[str],
    vertices: Sequence[np.ndarray],
    shape: Sequence[int],
) -> NewBoxes:
    """Give every row without an id (``box_ids == 0``) the next id and group them by plane.

    ``shape`` is the image's spatial shape ``(*leading, H, W)``; a box off the image, on a
    plane outside it, or not a rectangle is rejected.
    """
    ids = np.asarray(box_ids, dtype=int)
    next_id = int(ids.max()) + 1 if len(ids) else 1
    n_lead = len(shape) - 2
    out = NewBoxes({}, [], [])
    planes: dict[Index, PlaneBoxes] = {}
    for row in (int(r) for r in np.flatnonzero(ids == 0)):
        out.ids[row] = next_id
        next_id += 1
        if shape_types[row] != "rectangle":
            out.rejected.append(row)
            continue
        index, box = rectangle_to_box(vertices[row], tuple(shape[-2:]))
        inside = len(index) == n_lead and all(
            0 <= i < s for i, s in zip(index, shape[:n_lead], strict=True)
        )
        if box is None or not inside:
            out.rejected.append(row)
            continue
        plane = planes.setdefault(index, PlaneBoxes(index))
        plane.boxes.append(box)
        plane.ids.append(out.ids[row])
    out.planes = list(planes.values())
    return out


def interpolation_pair(
    selected: Sequence[int],
    labels: np.ndarray,
    box_ids: np.ndarray,
    indices: Sequence[Index],
) -> tuple[int, int] | None:
    """The two rows to interpolate between, in drawing order, or None.

    The two ``selected`` rows if exactly two are; else the last two segmented boxes
    (``labels > 0``) lying on two different planes. ``indices`` is each row's plane.
    """
    ids = np.asarray(box_ids, dtype=int)
    if len(selected) == 2:
        rows = sorted(int(r) for r in selected)
    else:
        done = sorted((int(r) for r in np.flatnonzero(np.asarray(labels) > 0)), key=ids.__getitem__)
        rows = []
        for r in reversed(done):
            if not rows or indices[r] != indices[rows[0]]:
                rows.append(r)
            if len(rows) == 2:
                break
        if len(rows) != 2:
            return None
    rows.sort(key=ids.__getitem__)
    return rows[0], rows[1]
