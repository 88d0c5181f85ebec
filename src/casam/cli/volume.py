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


def segment_volume(args, path: Path, slices, k: int, boxes, points, labels) -> int:
    """--propagate: one structure through the whole volume from the prompt on slice K."""
    from casam.volume_masks import write_volume_mask

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
    out = write_volume_mask(args.out, r.masks, source=path)
    lo, hi = r.indices[0], r.indices[-1]
    tasks = ", ".join(f"{t or 'SAM'} x{n}" for t, n in r.tasks.most_common())
    print(
        f"{out}: {int(r.masks.sum())} voxels on slices {lo}..{hi} ({len(r.slices)} slices; "
        f"stopped up: {r.stops['up']}, down: {r.stops['down']}); tasks {tasks}"
    )
    return 0
