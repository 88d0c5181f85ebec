"""DICOM SEG (highdicom): label masks written against, and read back onto, their source series.

A mask is written as a BINARY segmentation with one segment per nonzero label value (segment
numbers 1..N in increasing label order), one frame per source slice, referencing every source
instance. Reading gives the segment numbers as label values on the image's (z, y, x) grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from casam.errors import InputError
from casam.volumes import Geometry, from_native_array, to_native_array, write_atomically

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_seg(path: Path) -> bool:
    """Whether ``path`` is a DICOM Segmentation object."""
    if not path.is_file():
        return False
    from casam.dicom import header_or_none

    ds = header_or_none(path)
    return ds is not None and str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS


def _sources(geo: Geometry) -> list[Any]:
    import pydicom

    if geo.source_format != "dicom" or not geo.source_files:
        raise InputError(
            f"a DICOM SEG needs a DICOM source series, but {geo.source} is {geo.source_format}; "
            "save the mask as .nii.gz or .nrrd instead"
        )
    try:
        return [pydicom.dcmread(f) for f in geo.source_files]
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise InputError(f"cannot re-read the source series of {geo.source} ({e})") from None


def _descriptions(labels: list[int], names: dict | None) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from casam import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="CA-SAM", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=str((names or {}).get(v, f"label {v}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        for n, v in enumerate(labels, start=1)
    ]


def write_seg(mask: np.ndarray, geo: Geometry, path: Path, names: dict | None = None) -> Path:
    """Write a (z, y, x) label mask on ``geo``'s grid as a DICOM SEG referencing its series."""
    import highdicom as hd

    native, _ = to_native_array(np.asarray(mask), geo)
    sources = _sources(geo)
    labels = [int(v) for v in np.unique(native) if v != 0]
    if not labels:
        raise InputError(f"the mask is empty; nothing to save in {path}")
    segments = np.zeros(native.shape, np.uint16)
    for n, v in enumerate(labels, start=1):
        segments[native == v] = n
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(labels, names),
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-casam",
        manufacturer_model_name="CA-SAM",
        software_versions="casam",
        device_serial_number="0",
        series_description="CA-SAM segmentation",
    )
    return write_atomically(path, seg.save_as)


def referenced_series(path: Path) -> Path:
    """A file of the image series a SEG references, searched beside it and one folder up."""
    from casam.dicom import header_or_none

    ds = header_or_none(path)
    try:
        uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        raise InputError(f"the DICOM SEG {path} names no source series") from None
    for folder in (path.parent, path.parent.parent):
        for p in sorted(folder.rglob("*")):
            h = header_or_none(p) if p.is_file() and p != path else None
            if h is not None and str(h.get("SeriesInstanceUID", "")) == uid and "Rows" in h:
                if str(h.get("SOPClassUID", "")) != SEG_SOP_CLASS:
                    return p
    raise InputError(
        f"the DICOM SEG {path} references series {uid}, which is not in {path.parent} or "
        f"{path.parent.parent}; open the series first or put the SEG beside it"
    )


def read_seg_like(path: Path, geo: Geometry) -> np.ndarray:
    """The segments of a SEG as a (z, y, x) label array on the grid of its source series."""
    import highdicom as hd
    import pydicom

    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # noqa: BLE001 - pydicom/highdicom raise many kinds
        raise InputError(f"cannot read the DICOM SEG {path} ({str(e)[:100]})") from None
    if geo.source_format != "dicom":
        raise InputError(f"{path} is a DICOM SEG but its image {geo.source} is not a DICOM series")
    uids = [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in geo.source_files
    ]
    referenced = {str(u[2]) for u in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise InputError(f"the DICOM SEG {path} references none of the slices of {geo.source}")
    try:
        native = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
        )
    except (ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"cannot place the DICOM SEG {path} on {geo.source} ({e})") from None
    return from_native_array(native, geo)
