"""Batch work over many inputs: work units, manifests, one work function per command.

A **work unit** is one input file (a 2-D image or a whole volume) with its optional mask file,
boxes and output file. Units are made on the client from paths only; whoever runs a unit (this
process, or a Dask worker: :mod:`casam.cluster`) reads its own input and writes its own output,
so pixels never travel between processes. Running a unit never raises for a bad input: the
:class:`Outcome` carries the usual one-line message instead, and the other units go on.

A manifest is a ``.csv`` (header row) or ``.jsonl`` file with one input per row: ``image``
(required), ``mask``, ``boxes`` (JSON list of XYXY boxes in image pixels) and ``slice``.
Relative paths are taken from the manifest's folder.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from casam.errors import CasamError, InputError
from casam.io import expand_paths, read_array, read_slices, slice_names, suffix_of

MANIFEST_SUFFIXES = (".csv", ".jsonl")
COMMANDS = ("route", "eval", "segment", "embed")


@dataclass(frozen=True)
class Unit:
    """One input file and what to do with it; only paths and a few numbers (cheap to ship)."""

    index: int
    image: str
    mask: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    slice: int | None = None
    out: str | None = None


@dataclass
class Outcome:
    """What running one unit gave: printable lines, numbers to aggregate, or an error."""

    index: int
    image: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def is_manifest(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES and Path(path).is_file()


def _parse_boxes(raw: Any, where: str) -> tuple[tuple[float, float, float, float], ...] | None:
    if raw in (None, ""):
        return None
    try:
        boxes = json.loads(raw) if isinstance(raw, str) else raw
        arr = np.asarray(boxes, dtype=float).reshape(-1, 4)
    except (ValueError, TypeError):
        raise InputError(
            f"{where}: boxes must be a JSON list of [x0, y0, x1, y1] boxes, not {raw!r}"
        ) from None
    return tuple(tuple(float(v) for v in b) for b in arr)


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(f"{path}:{i + 2}", dict(r)) for i, r in enumerate(reader)]
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{i + 1}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{i + 1}: each line must be a JSON object with an 'image'")
        rows.append((f"{path}:{i + 1}", row))
    return rows


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV/JSONL manifest as ``{"image", "mask", "boxes", "slice"}`` dicts."""
    p = Path(path).expanduser()
    out = []
    for where, row in _rows(p):
        image = row.get("image")
        if not image:
            raise InputError(f"{where}: no 'image' given; every manifest row needs one")
        mask = row.get("mask") or None
        k = row.get("slice")
        try:
            k = None if k in (None, "") else int(k)
        except ValueError:
            raise InputError(f"{where}: slice must be a whole number, not {k!r}") from None
        out.append(
            {
                "image": str(p.parent / Path(image).expanduser()),
                "mask": None if mask is None else str(p.parent / Path(mask).expanduser()),
                "boxes": _parse_boxes(row.get("boxes"), where),
                "slice": k,
            }
        )
    if not out:
        raise InputError(f"{p}: the manifest lists no inputs")
    return out


def collect(images: Sequence[str | Path], masks: Sequence[str | Path] | None = None) -> list[Unit]:
    """Units from image files/folders/manifests, paired in order with mask files if given."""
    rows: list[dict[str, Any]] = []
    for raw in images:
        if is_manifest(raw):
            rows.extend(read_manifest(raw))
        else:
            rows.extend({"image": str(p)} for p in expand_paths([raw], "IMAGE"))
    if masks:
        mpaths = expand_paths(masks, "--masks")
        if len(mpaths) != len(rows):
            raise InputError(
                f"{len(rows)} image files but {len(mpaths)} mask files; "
                "give one mask file per image file"
            )
        for row, m in zip(rows, mpaths, strict=True):
            row["mask"] = str(m)
    return [Unit(index=i, **row) for i, row in enumerate(rows)]


def output_name(image: str, out_dir: str | Path, suffix: str = ".tif") -> Path:
    """``out_dir/<image name without its suffix><suffix>``."""
    p = Path(image)
    stem = p.name[: -len(suffix_of(p))] if suffix_of(p) else p.name
    return Path(out_dir).expanduser() / f"{stem}{suffix}"


def with_outputs(units: Sequence[Unit], out_dir: str | Path, suffix: str = ".tif") -> list[Unit]:
    """Give each unit its own mask file in ``out_dir``; refuses two units on one file."""
    d = Path(out_dir).expanduser()
    if not d.is_dir():
        raise InputError(f"--out: folder {d} does not exist; create it first")
    seen: dict[Path, str] = {}
    out = []
    for u in units:
        target = output_name(u.image, d, suffix)
        if target in seen:
            raise InputError(
                f"{u.image} and {seen[target]} would both write {target}; rename one input"
            )
        seen[target] = u.image
        out.append(Unit(u.index, u.image, u.mask, u.boxes, u.slice, str(target)))
    return out


def leftover_tmp(out: str | Path) -> list[Path]:
    """Half-written temporaries of ``out`` (io.write_mask's ``.<name>.<pid>.tmp*``)."""
    p = Path(out)
    return sorted(p.parent.glob(f".{p.name}.*.tmp*"))


# ---- work functions: (predictor, unit, options) -> Outcome ----------------------------------
def _route(p: Any, u: Unit, opts: dict[str, Any]) -> Outcome:
    path = Path(u.image)
    slices = read_slices(path)
    lines = []
    for name, img in zip(slice_names(path, len(slices)), slices, strict=True):
        route = p.route_embedding(p.embed(img))
        lines.append(json.dumps(route.to_json(name)) if opts.get("json") else f"{name}\t{route}")
    return Outcome(u.index, u.image, lines=lines)


def _eval(p: Any, u: Unit, opts: dict[str, Any]) -> Outcome:
    from casam.io import read_pairs
    from casam.metrics import boundary_iou, iou
    from casam.preprocess import mask_box

    if u.mask is None:
        raise InputError(f"{u.image}: no mask given; eval needs one mask file per image")
    pairs, skipped = read_pairs([u.image], [u.mask], opts.get("label"))
    ious, bious, tasks = [], [], []
    for pair in pairs:
        pred = p.predict_embedding(p.embed(pair.image), mask_box(pair.mask), opts["task"])
        ious.append(iou(pred.masks[0], pair.mask))
        bious.append(boundary_iou(pred.masks[0], pair.mask))
        tasks.append(pred.task or "sam")
    data = {"iou": ious, "biou": bious, "tasks": tasks, "skipped": skipped}
    return Outcome(u.index, u.image, data=data)


def _unit_boxes(u: Unit, opts: dict[str, Any], mask: np.ndarray | None) -> np.ndarray | None:
    from casam.preprocess import mask_box

    if u.boxes is not None:
        return np.asarray(u.boxes, dtype=float)
    if opts.get("boxes") is not None:
        return np.asarray(opts["boxes"], dtype=float)
    if mask is not None:
        return mask_box(mask)[None] if mask.any() else None
    raise InputError(f"{u.image}: no box given; give --box or boxes/mask in a manifest")


def _mask_slices(u: Unit, n: int, label: int | None) -> list[np.ndarray | None]:
    from casam.io import mask_foreground

    if u.mask is None:
        return [None] * n
    masks = read_slices(Path(u.mask))
    if len(masks) != n:
        raise InputError(f"{u.image} has {n} slices but its mask {u.mask} has {len(masks)}")
    return [mask_foreground(m, label) for m in masks]


def _verified(u: Unit, shape: tuple[int, ...]) -> bool:
    """The unit's mask file exists, reads, has ``shape`` and holds a binary mask."""
    assert u.out is not None
    out = Path(u.out)
    if not out.is_file():
        return False
    try:
        a = read_array(out)
    except CasamError:
        return False
    return a.shape == shape and bool(np.isin(a, (0, 1, 255)).all())


def _segment(p: Any, u: Unit, opts: dict[str, Any]) -> Outcome:
    from casam.io import write_mask

    slices = read_slices(Path(u.image))
    ks = range(len(slices)) if u.slice is None else [u.slice]
    if u.slice is not None and not 0 <= u.slice < len(slices):
        raise InputError(f"{u.image}: slice {u.slice} is out of range (0..{len(slices) - 1})")
    shape = (len(ks), *slices[0].shape[:2]) if len(ks) > 1 else slices[ks[0]].shape[:2]
    if opts.get("resume") and _verified(u, shape):
        return Outcome(u.index, u.image, lines=[f"{u.out}: kept (resumed)"], resumed=True)
    masks = _mask_slices(u, len(slices), opts.get("label"))
    out, used = np.zeros((len(ks), *slices[0].shape[:2]), bool), Counter()
    for j, k in enumerate(ks):
        boxes = _unit_boxes(u, opts, masks[k])
        if boxes is None:
            continue
        pred = p.predict_embedding(p.embed(slices[k]), boxes, opts.get("task", "auto"))
        out[j] = pred.masks.any(axis=0)
        used[pred.task or "SAM"] += 1
    write_mask(u.out, out[0] if len(ks) == 1 else out)
    tasks = ", ".join(f"{t} x{n}" for t, n in used.most_common()) or "none (no boxes)"
    line = f"{u.out}: {int(out.sum())} pixels in {len(ks)} slice(s), task {tasks}"
    return Outcome(u.index, u.image, lines=[line], data={"pixels": int(out.sum())})


def _embed(p: Any, u: Unit, opts: dict[str, Any]) -> Outcome:
    slices = read_slices(Path(u.image))
    cached = 0
    for img in slices:
        cached += bool(p.is_cached(img))
        p.embed(img)
    data = {"image": u.image, "slices": len(slices), "cached": cached}
    line = (
        json.dumps(data)
        if opts.get("json")
        else (f"{u.image}: {len(slices)} slice(s), {cached} already cached")
    )
    return Outcome(u.index, u.image, lines=[line], data=data)


WORK: dict[str, Callable[[Any, Unit, dict[str, Any]], Outcome]] = {
    "route": _route,
    "eval": _eval,
    "segment": _segment,
    "embed": _embed,
}


def run_unit(predictor: Any, command: str, unit: Unit, opts: dict[str, Any]) -> Outcome:
    """Run one unit; a bad input (or an unreadable file) becomes the outcome's one-line error."""
    try:
        return WORK[command](predictor, unit, opts)
    except CasamError as e:
        return Outcome(unit.index, unit.image, error=str(e))
    except (OSError, MemoryError) as e:
        return Outcome(unit.index, unit.image, error=f"{unit.image}: {type(e).__name__}: {e}")


def error_line(o: Outcome, as_json: bool) -> str:
    """How a failed unit shows in the results stream."""
    if as_json:
        return json.dumps({"image": o.image, "error": o.error})
    return f"{o.image}\terror: {o.error}"


def eval_summary(
    ious: Sequence[float], bious: Sequence[float], tasks: Sequence[str], skipped: int
) -> tuple[dict[str, Any], str]:
    """The ``eval`` result (JSON dict and text line) from per-slice numbers in input order."""
    if not ious:
        raise InputError("--masks: every mask slice is empty; there is nothing to evaluate")
    routed = Counter(tasks)
    result = {
        "n_images": len(ious),
        "iou": float(np.mean(ious)),
        "biou": float(np.mean(bious)),
        "routed": dict(routed),
    }
    share = ", ".join(f"{k}: {v}" for k, v in routed.most_common())
    text = (
        f"{len(ious)} slices ({skipped} empty skipped): IoU {result['iou']:.3f}, "
        f"Boundary IoU {result['biou']:.3f}; routed to {share}"
    )
    return result, text


def merge_eval(outcomes: Sequence[Outcome]) -> tuple[dict[str, Any], str]:
    """Aggregate the successful eval outcomes (sorted by input index) exactly like serial eval."""
    ok = sorted((o for o in outcomes if o.ok), key=lambda o: o.index)
    return eval_summary(
        [x for o in ok for x in o.data["iou"]],
        [x for o in ok for x in o.data["biou"]],
        [x for o in ok for x in o.data["tasks"]],
        sum(o.data["skipped"] for o in ok),
    )
