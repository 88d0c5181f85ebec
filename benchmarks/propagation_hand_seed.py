"""Propagation from a slice corrected by hand, against propagation from a box (issue 11).

    nice -n 10 python benchmarks/propagation_hand_seed.py [--out FILE]

(default FILE: benchmarks/results/propagation-hand-seed.json; ``--table`` prints the tables
from it.)

The dock's *Segment through volume* starts from the last box drawn on the slice in view, unless
that slice was corrected by clicks: then it starts from the corrected mask, as
``casam.propagate.propagate(mask=...)`` (a hand-drawn seed: its box widened by
``PropagateSettings.box_margin``, the stop rules' intensity reference from that mask). Issue 11
asks that "after a correction on one slice, re-propagating from it updates the neighbouring
slices". This measures what such a seed gives, plain SAM, per organ and seed slice (the
structure's largest, middle, quarter and three-quarter slices), as 3-D Dice against the ground
truth:

- ``box``: the ground-truth box on the seed slice (what the dock does before any click),
- ``clicks``: that box, then the product's clicks (``ClickSession``, each at the centre of the
  largest error, as in the click protocol) until the slice's IoU reaches 0.90 or 3 clicks, then
  propagation from the corrected mask (what the dock does after the clicks),
- ``mask``: propagation from the ground-truth mask itself (a perfect correction).

Validation organs and test organs of ``interactive.py`` (the rows say which). A quality figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, box_of, machine  # noqa: E402
from interactive import VOLUMES, axial_volume, dice  # noqa: E402

ORGANS = [n for n, v in VOLUMES.items() if "tumour" not in n]
SEEDS = ("largest", "middle", "quarter", "three-quarter")
WAYS = ("box", "clicks", "mask")
MAX_CLICKS = 3


def seed_slices(gt: np.ndarray) -> dict[str, int]:
    ks = np.flatnonzero(gt.any((1, 2)))
    a, n = int(ks[0]), int(ks[-1] - ks[0])
    return {
        "largest": int(np.argmax(gt.sum((1, 2)))),
        "middle": a + n // 2,
        "quarter": a + n // 4,
        "three-quarter": a + 3 * n // 4,
    }


def corrected(p, image: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int, float]:
    """The box's mask after up to MAX_CLICKS clicks of the protocol: (mask, clicks, IoU)."""
    from casam.clicks import ClickSession, next_click
    from casam.metrics import iou

    s = ClickSession(p, image, box_of(gt), task="sam")
    n = 0
    while n < MAX_CLICKS and iou(s.mask, gt) < 0.90:
        c = next_click(s.mask, gt)
        if c is None:
            break
        s.add(c.x, c.y, c.positive)
        n += 1
    return s.mask.copy(), n, float(iou(s.mask, gt))


def run_organ(p, name: str) -> dict:
    from casam.propagate import propagate

    vol, gt = axial_volume(name)
    out = {}
    for seed, k in seed_slices(gt).items():
        fixed, n, seed_iou = corrected(p, vol[k], gt[k])
        row = {"slice": k, "clicks_n": n, "seed_iou_after_clicks": seed_iou}
        for way, prompt in (
            ("box", {"box": box_of(gt[k])}),
            ("clicks", {"mask": fixed}),
            ("mask", {"mask": gt[k]}),
        ):
            r = propagate(p, vol, k, task="sam", **prompt)
            row[way], row[f"stops_{way}"] = dice(r.masks, gt), r.stops
        out[seed] = row
        print(name, seed, json.dumps({w: round(row[w], 3) for w in WAYS}), flush=True)
    return out


def table(res: dict) -> str:
    lines = [
        "| organ | role | seed (slice) | box | box + clicks (n, seed IoU) | GT mask |",
        "|---|---|---|---|---|---|",
    ]
    means: dict[str, dict[str, list[float]]] = {}
    for name, rows in res["organs"].items():
        role = VOLUMES[name][2]
        for seed, r in rows.items():
            lines.append(
                f"| {name} | {role} | {seed} ({r['slice']}) | {r['box']:.3f} | {r['clicks']:.3f} "
                f"({r['clicks_n']}, {r['seed_iou_after_clicks']:.2f}) | {r['mask']:.3f} |"
            )
            for w in WAYS:
                means.setdefault(role, {}).setdefault(w, []).append(r[w])
    lines.append("")
    lines.append("| role | seeds | box | box + clicks | GT mask |")
    lines.append("|---|---|---|---|---|")
    for role, m in means.items():
        cells = " | ".join(f"{np.mean(m[w]):.3f}" for w in WAYS)
        lines.append(f"| {role} | {len(m['box'])} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "propagation-hand-seed.json")
    )
    ap.add_argument("--organs", nargs="+", choices=ORGANS, default=ORGANS)
    ap.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    from casam import Predictor

    p = Predictor(library=False, disk_cache=EMB_CACHE)
    res = {"machine": machine(), "max_clicks": MAX_CLICKS, "organs": {}}
    for name in args.organs:
        res["organs"][name] = run_organ(p, name)
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
