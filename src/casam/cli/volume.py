"""``casam segment`` with clicks and ``--propagate`` (issue 11): the prompts and the 3-D run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from casam.cli.commands import _predictor, _progress
from casam.errors import InputError


def segment_prompts(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """--box/--point/--negative-point -> (boxes or None, points or None, labels or None)."""
    clicks = [(xy, 1) for xy in args.point or []] + [(xy, 0) for xy in args.negative_point or []]
    if not args.box and not clicks:
        raise InputError("give --box X0 Y0 X1 Y1 or --point X Y for the object to segment")
    boxes = np.array(args.box, dtype=float) if args.box else None
    if clicks:
        return boxes, np.array([c for c, _ in clicks], float), np.array([lb for _, lb in clicks])
    return boxes, None, None


def check_volume_out(out: str | Path, geo: Any) -> Path:
    """Where a 3-D mask can go: a clinical format on a volume's grid, or a (Z, H, W) .tif/.npy."""
    from casam.io import suffix_of
    from casam.volumes import MASK_SUFFIXES, SEG_SUFFIXES

    p = Path(out).expanduser()
    sfx = suffix_of(p)
    allowed = (".tif", ".tiff", ".npy") + ((MASK_SUFFIXES + SEG_SUFFIXES) if geo else ())
    if sfx not in allowed:
        hint = "" if geo else " (.nii.gz/.nrrd/.mha need a NIfTI, NRRD, MHA or DICOM IMAGE)"
        raise InputError(
            f"--out: cannot write a 3-D mask as {sfx or 'a file without suffix'}; use "
            f"{', '.join(allowed)}{hint}"
        )
    if not p.parent.is_dir():
        raise InputError(f"--out: folder {p.parent} does not exist")
    return p


def write_volume_mask(out: Path, masks: np.ndarray, geo: Any) -> Path:
    """A (Z, H, W) mask on the volume's grid (clinical formats) or as a plain uint8 stack."""
    from casam.io import suffix_of
    from casam.volumes import write_atomically, write_mask_like

    m = np.asarray(masks, bool).astype(np.uint8)
    sfx = suffix_of(out)
    if sfx in (".tif", ".tiff"):
        import tifffile

        return write_atomically(
            out, lambda t: tifffile.imwrite(t, m, compression="zlib", photometric="minisblack")
        )
    if sfx == ".npy":
        return write_atomically(out, lambda t: np.save(t, m, allow_pickle=False))
    return write_mask_like(m, geo, out)


def segment_volume(args, path: Path, slices, k: int, boxes, points, labels, geo=None) -> int:
    """--propagate: one structure through the whole volume from the prompt on slice K."""
    out = check_volume_out(args.out, geo)
    if len(slices) < 2:
        raise InputError(f"--propagate needs a volume; {path} holds one 2-D image")
    if boxes is not None and len(boxes) > 1:
        raise InputError("--propagate follows one structure: give one --box")
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"{path}: its slices differ in shape ({sorted(shapes)})")
    p = _predictor(args)
    with _progress(len(slices), "propagate") as bar:
        r = p.propagate(
            np.stack(slices),
            k,
            box=None if boxes is None else boxes[0],
            points=points,
            labels=labels,
            task=args.task,
            callback=lambda _: bar.update(),
        )
    out = write_volume_mask(out, r.masks, geo)
    lo, hi = r.indices[0], r.indices[-1]
    tasks = ", ".join(f"{t or 'SAM'} x{n}" for t, n in r.tasks.most_common())
    print(
        f"{out}: {int(r.masks.sum())} voxels on slices {lo}..{hi} ({len(r.slices)} slices; "
        f"stopped up: {r.stops['up']}, down: {r.stops['down']}); tasks {tasks}"
    )
    return 0
