"""npe2 reader: NIfTI, NRRD, MetaImage and DICOM series (folders or any file) with geometry.

A file named like a mask (``*_seg``, ``*_mask``, ``*_label``...) opens as a Labels layer; a
DICOM SEG opens as Labels on the grid of the series it references (found beside it); masks
next to a volume open with it. Notes (several series, uneven spacing, oblique) are shown as
napari warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from casam.volumes import VOLUME_SUFFIXES, read_mask_like, read_volume, suffix_of
from napari_casam._volume_layers import (
    LayerData,
    image_layer,
    labels_layer,
    layer_name,
    looks_like_labels,
    sibling_masks,
)

DICOM_SUFFIXES = (".dcm", ".ima", "")


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for one volume file, DICOM file or DICOM folder; None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_file() and suffix_of(p) in VOLUME_SUFFIXES:
        return read_layers
    from casam.dicom import looks_like_dicom

    if (p.is_dir() or suffix_of(p) in DICOM_SUFFIXES) and looks_like_dicom(p):
        return read_layers
    return None


def _warn(notes: list[str]) -> None:
    if not notes:
        return
    from napari.utils.notifications import show_warning

    for note in notes:
        show_warning(note)


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Layer data for ``path``: an image (plus masks found next to it) or one Labels layer."""
    p = Path(path[0] if isinstance(path, list) else path)
    from casam.dicom_seg import is_seg, referenced_series

    if is_seg(p):
        vol = read_volume(referenced_series(p))
        return [labels_layer(read_mask_like(p, vol.geometry), vol.geometry, layer_name(p))]
    vol = read_volume(p)
    _warn(vol.notes)
    name = layer_name(p)
    if looks_like_labels(p, vol):
        return [labels_layer(vol.voxels, vol.geometry, name)]
    layers = [image_layer(vol, name)]
    masks = sibling_masks(p) if p.is_file() else _segs_in(p)
    for m in masks:
        layers.append(labels_layer(read_mask_like(m, vol.geometry), vol.geometry, layer_name(m)))
    return layers


def _segs_in(folder: Path) -> list[Path]:
    """DICOM SEG files inside a series folder (any that reference another series are skipped
    when read, with a clear error; none here are guessed)."""
    from casam.dicom_seg import is_seg

    return [p for p in sorted(folder.rglob("*")) if p.is_file() and is_seg(p)]
