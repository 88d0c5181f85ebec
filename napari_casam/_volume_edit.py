"""Qt-free edits of a Labels volume by propagation and clicks (pure functions, no viewer).

Rules (issue 11): a propagated or clicked mask only ever paints background or its own object's
pixels, never another label; a re-propagation rewrites its object on the slices it visits, but
never on a slice the user edited by hand; a click session's mask replaces its object on that one
slice. Each function returns the ``Labels.data_setitem`` index tuples, so the dock applies one
edit inside ``block_history()``: one undoable step.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

Indices = tuple[np.ndarray, ...]


def _indices(mask3: np.ndarray, lead: Sequence[int]) -> Indices:
    zs, rows, cols = np.nonzero(mask3)
    fixed = tuple(np.full(zs.shape, i, dtype=np.intp) for i in lead)
    return (*fixed, zs, rows, cols)


def propagation_edit(
    labels: np.ndarray,
    masks: np.ndarray,
    value: int,
    visited: Collection[int],
    locked: Collection[int] = (),
    lead: Sequence[int] = (),
) -> tuple[Indices, Indices]:
    """(paint, erase) indices that put a propagated (Z, H, W) mask into ``labels`` as ``value``.

    ``labels``: the (Z, H, W) label volume in view (``lead``: indices of any axes before it);
    ``visited``: slices the propagation segmented (only these change); ``locked``: slices edited
    by hand (never change). Paint: mask pixels that are background or already ``value``;
    erase: pixels of ``value`` on visited slices that the new mask no longer covers.
    """
    lab = np.asarray(labels)
    m = np.asarray(masks, dtype=bool)
    rows = np.zeros(lab.shape[0], dtype=bool)
    rows[[j for j in visited if j not in set(locked)]] = True
    own = lab == value
    paint = m & (lab == 0) & rows[:, None, None]
    erase = own & ~m & rows[:, None, None]
    return _indices(paint, lead), _indices(erase, lead)


def slice_edit(
    labels_plane: np.ndarray, mask: np.ndarray, value: int, lead: Sequence[int] = ()
) -> tuple[Indices, Indices]:
    """(paint, erase) indices that make ``value``'s pixels on one (H, W) plane equal ``mask``
    (within background and its own pixels); ``lead`` is the plane's index (slice, ...)."""
    lab = np.asarray(labels_plane)
    m = np.asarray(mask, dtype=bool)
    paint = np.nonzero(m & (lab == 0))
    erase = np.nonzero((lab == value) & ~m)

    def full(ix: tuple[np.ndarray, np.ndarray]) -> Indices:
        fixed = tuple(np.full(ix[0].shape, i, dtype=np.intp) for i in lead)
        return (*fixed, *ix)

    return full(paint), full(erase)


def click_to_pixel(point: Sequence[float], n_lead: int) -> tuple[tuple[int, ...], float, float]:
    """A Points layer coordinate (lead..., row, col) -> (plane index, X, Y) for the engine."""
    p = [float(v) for v in point]
    index = tuple(int(round(v)) for v in p[:n_lead])
    return index, p[n_lead + 1], p[n_lead]
