"""Writing masks into a Labels layer as undoable edits, and undo that keeps boxes in step.

Works on anything shaped like napari's ``Labels`` (``data``, ``data_setitem``,
``block_history``, ``undo``/``redo``) and ``Shapes`` (``data``, ``features``,
``selected_data``, ``remove_selected``); napari is never imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_casam._layers import Index, mask_to_indices, next_label, plane, rectangle_to_box

#: A new mask lying at least this much on one existing object replaces that object's mask.
REPLACE_OVERLAP = 0.5


def covered_label(current: np.ndarray, mask: np.ndarray) -> int:
    """The label covering at least :data:`REPLACE_OVERLAP` of ``mask`` on a plane (0: none)."""
    under = np.asarray(current)[np.asarray(mask, dtype=bool)]
    under = under[under > 0]
    if not under.size:
        return 0
    values, counts = np.unique(under, return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]) if counts[best] >= REPLACE_OVERLAP * mask.sum() else 0


def write_masks(masks_layer: Any, index: Index, masks: np.ndarray) -> tuple[list[int], set[int]]:
    """Paint each mask (N, H, W) on plane ``index`` as ONE undo step.

    A mask lying mostly on one existing object (a box redrawn over it) replaces that object's
    pixels on this plane and keeps its label; any other mask gets a new label and leaves
    pixels that already carry a label alone. Returns each mask's label (0: no new pixel) and
    the labels replaced.
    """
    new_label = next_label(masks_layer.data)
    values: list[int] = []
    replaced: set[int] = set()
    with masks_layer.block_history():
        for m in np.asarray(masks, dtype=bool):
            current = plane(masks_layer.data, index)
            target = covered_label(current, m)
            if target:
                old = mask_to_indices((current == target) & ~m, index, preserve_existing=False)
                masks_layer.data_setitem(old, 0)
                keep = m & ((current == 0) | (current == target))
                masks_layer.data_setitem(
                    mask_to_indices(keep, index, preserve_existing=False), target
                )
                values.append(target)
                replaced.add(target)
                continue
            ix = mask_to_indices(m, index, current, preserve_existing=True)
            if ix[-1].size:
                masks_layer.data_setitem(ix, new_label)
                values.append(new_label)
                new_label += 1
            else:
                values.append(0)
    return values, replaced


def changed_planes(before: np.ndarray, after: np.ndarray, n_lead: int) -> list[Index]:
    """Plane indices where two label arrays of one image differ."""
    if n_lead <= 0:
        return [()] if not np.array_equal(before, after) else []
    diff = (np.asarray(before) != np.asarray(after)).reshape(*before.shape[:n_lead], -1).any(-1)
    return [tuple(int(i) for i in ix) for ix in np.argwhere(diff)]


def write_interpolation(
    masks_layer: Any,
    result: Sequence[tuple[Index, np.ndarray]],
    label_a: int,
    end: tuple[Index, int],
) -> int:
    """Paint interpolated masks as one object (label of the first box) in ONE undo step.

    ``end`` is the plane and label of the second box, which is relabelled to join the
    object. Returns the label used.
    """
    value = label_a if label_a > 0 else next_label(masks_layer.data)
    index_b, label_b = end
    with masks_layer.block_history():
        for index, m in result:
            current = plane(masks_layer.data, index)
            ix = mask_to_indices(m, index, current, preserve_existing=True)
            if ix[-1].size:
                masks_layer.data_setitem(ix, value)
        if label_b > 0 and label_b != value:
            rows, cols = np.nonzero(plane(masks_layer.data, index_b) == label_b)
            if rows.size:
                lead = tuple(np.full(rows.shape, i, dtype=np.intp) for i in index_b)
                masks_layer.data_setitem((*lead, rows, cols), value)
    return value


def set_box_labels(prompts: Any, ids: Sequence[int], values: Sequence[int]) -> None:
    """Record in the ``label`` feature which label each box id produced (-1: none)."""
    feats = prompts.features
    all_ids = feats["box_id"].to_numpy()
    for bid, value in zip(ids, values, strict=False):
        rows = np.flatnonzero(all_ids == bid)
        if rows.size:
            feats.loc[rows[0], "label"] = value if value else -1


def box_presence(prompts: Any, masks_layer: Any) -> dict[int, bool]:
    """For every segmented box (by row): does its label still appear on its plane?"""
    out = {}
    labels = prompts.features["label"].to_numpy()
    for row in np.flatnonzero(labels > 0):
        index, _ = rectangle_to_box(prompts.data[row])
        try:
            out[int(row)] = bool((plane(masks_layer.data, index) == labels[row]).any())
        except (IndexError, ValueError):
            out[int(row)] = False
    return out


def undo_with_boxes(masks_layer: Any, prompts: Any | None) -> set[int]:
    """Undo the last edit of the masks layer; remove the boxes whose mask it removed.

    Returns the rows of the boxes removed.
    """
    before = box_presence(prompts, masks_layer) if prompts is not None else {}
    masks_layer.undo()
    if prompts is None:
        return set()
    after = box_presence(prompts, masks_layer)
    gone = {r for r, present in before.items() if present and not after.get(r, False)}
    if gone:
        prompts.selected_data = gone
        prompts.remove_selected()
    return gone
