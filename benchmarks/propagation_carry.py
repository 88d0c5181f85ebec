"""Propagation: ways of carrying the prompt to the next slice, on the VALIDATION organs only.

    nice -n 15 python benchmarks/propagation_carry.py [--out FILE] [--rules RULE...]

(default FILE: benchmarks/results/propagation-carry.json)

Issue 11's under-segmentation drift: the mask loses a little of the organ on a slice, the next
box is that mask's box, and the loss is never recovered (docs/benchmark-interactive.md, section
0). Each rule below replaces how slice j+1 is prompted from slice j's result; everything else is
the product's (``casam.propagate``: the seed's box margins, ``neighbour_prompt``, the default
stop rules). Plain SAM, seeds: the protocol's (the slice with the largest area) and, where drift
has more slices to grow, the structure's quarter slices (first + n/4, first + 3n/4 of its n
slices). The rule "product" must equal ``casam.propagate.propagate`` (checked on every volume).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import box_of, machine  # noqa: E402
from interactive import EMB_CACHE, LIB, VALIDATION, axial_volume, dice  # noqa: E402


class Slice:
    """One slice's decoder: masks, SAM scores and full-size logits of boxes (cached)."""

    def __init__(self, p, e):
        self.p, self.e, self._memo = p, e, {}

    def box(self, box) -> tuple[np.ndarray, float, np.ndarray]:
        """(mask, SAM's IoU estimate, full-size logits) of one XYXY box, the product's decode."""
        b = np.asarray(box, float).reshape(1, 4)
        key = ("box", tuple(np.round(b[0], 4)))
        if key not in self._memo:
            pred = self.p.predict_embedding(self.e, b, "sam")
            lg = torch.from_numpy(pred.logits)[:, None]
            up = self.p.backbone.upscale_masks(lg, self.e.geometry)[0].numpy()
            self._memo[key] = (pred.masks[0], float(pred.scores[0]), up)
        return self._memo[key]

    def candidates(self, box) -> list[tuple[np.ndarray, float, np.ndarray]]:
        """SAM's single output and its three multimask candidates for one box."""
        bb, geo = self.p.backbone, self.e.geometry
        bt = torch.from_numpy(geo.boxes_to_input(np.asarray(box, float).reshape(1, 4)))
        out = [self.box(box)]
        with torch.no_grad():
            sparse, dense = bb.prompt_encoder(points=None, boxes=bt, masks=None)
            lo, iou = bb.mask_decoder(
                image_embeddings=self.e.z[None].to(bb.device),
                image_pe=bb._image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            up = bb.upscale_masks(lo[0][:, None], geo).numpy()
        out += [(up[i] > 0, float(iou[0, i]), up[i]) for i in range(up.shape[0])]
        return out


def widen(box, f: float, shape) -> np.ndarray:
    """A box grown (f > 0) or shrunk by ``f`` of its width/height per side, inside the image."""
    b = np.asarray(box, float).reshape(4)
    bw, bh = b[2] - b[0], b[3] - b[1]
    h, w = shape
    return np.clip(b + f * np.array([-bw, -bh, bw, bh]), 0, [w, h, w, h])


def mask_prompt(mask, ctx) -> np.ndarray:
    """The product's next box for ``mask`` (seed margins, at least ``box_pad`` pixels)."""
    from casam.propagate import neighbour_prompt

    return neighbour_prompt(mask, None, ctx["settings"], ctx["margins"])["boxes"][0]


def lenient_region(mask, logits, t: float, reach: int | None) -> np.ndarray:
    """``mask`` plus the parts of ``logits > t`` connected to it (within ``reach`` px of it)."""
    from scipy.ndimage import binary_dilation, label

    weak = logits > t
    if reach is not None:
        weak &= binary_dilation(mask, iterations=reach)
    lab, _ = label(weak)
    return mask | np.isin(lab, np.unique(lab[mask & (lab > 0)]))


# A rule: (slice decoder, neighbour's mask, its full-size logits, previous prompt box, the
# product's box, context) -> (mask, score, logits, prompt box used).
def product(sl, mask, logits, prev, box, ctx):
    return (*sl.box(box), box)


def momentum(a):
    def rule(sl, mask, logits, prev, box, ctx):
        b = a * prev + (1 - a) * box
        return (*sl.box(b), b)

    return rule


def shrink_limit(r):
    """Each side moves inward by at most ``r`` of the previous prompt box's size per slice."""

    def rule(sl, mask, logits, prev, box, ctx):
        lim = widen(prev, -r, mask.shape)
        b = np.concatenate([np.minimum(box[:2], lim[:2]), np.maximum(box[2:], lim[2:])])
        return (*sl.box(b), b)

    return rule


def lenient(t, reach=None):
    """The box of the neighbour's mask plus its weakly positive logits (``> t``)."""

    def rule(sl, mask, logits, prev, box, ctx):
        b = mask_prompt(lenient_region(mask, logits, t, reach), ctx)
        return (*sl.box(b), b)

    return rule


def lenient_like(t, z, reach=None):
    """The lenient box, grown only into pixels that look like the seed's organ (within ``z`` of
    its SDs, on the neighbour's slice)."""

    def rule(sl, mask, logits, prev, box, ctx):
        from scipy.ndimage import binary_dilation, label

        mean, sd = ctx["look"]
        img = np.asarray(ctx["neighbour image"], float)
        img = img.mean(-1) if img.ndim == 3 else img
        weak = (logits > t) & (np.abs(img - mean) <= z * sd)
        if reach is not None:
            weak &= binary_dilation(mask, iterations=reach)
        lab, _ = label(weak | mask)
        b = mask_prompt(np.isin(lab, np.unique(lab[mask & (lab > 0)])), ctx)
        return (*sl.box(b), b)

    return rule


def multimask(how):
    """Among SAM's single output and 3 multimask candidates, the one most like the neighbour."""

    def rule(sl, mask, logits, prev, box, ctx):
        c = sl.candidates(box)
        if how == "IoU with neighbour":
            i = int(np.argmax([iou(m, mask) for m, _, _ in c]))
        elif how == "area nearest neighbour's":
            i = int(np.argmin([abs(int(m.sum()) - int(mask.sum())) for m, _, _ in c]))
        else:  # the largest of the confident candidates that overlap the neighbour
            top = max(s for _, s, _ in c)
            ok = [k for k, (m, s, _) in enumerate(c) if s >= 0.9 * top and iou(m, mask) > 0.5]
            i = max(ok, key=lambda k: c[k][0].sum()) if ok else 0
        return (*c[i], box)

    return rule


def reprompt(drop, f):
    """Area fell below ``drop`` x the neighbour's: try the previous prompt box widened by ``f``
    and keep the larger mask if SAM is about as sure of it."""

    def rule(sl, mask, logits, prev, box, ctx):
        m, s, lg = sl.box(box)
        if m.sum() < drop * mask.sum():
            b2 = widen(prev, f, mask.shape)
            m2, s2, lg2 = sl.box(b2)
            if m2.sum() > m.sum() and s2 >= s - 0.05:
                return m2, s2, lg2, b2
        return m, s, lg, box

    return rule


def best_score(fs):
    """The box widened by each of ``fs`` whose mask SAM scores highest."""

    def rule(sl, mask, logits, prev, box, ctx):
        outs = [(*sl.box(b), b) for b in (widen(box, f, mask.shape) for f in fs)]
        return max(outs, key=lambda o: o[1])

    return rule


def touch(f, rounds=2, tol=1.0):
    """Widen each side the mask reaches (within ``tol`` px) by ``f``, decode again."""

    def rule(sl, mask, logits, prev, box, ctx):
        from casam.preprocess import mask_box

        b = np.asarray(box, float)
        for _ in range(rounds + 1):
            m, s, lg = sl.box(b)
            if not m.any():
                break
            gap = np.abs(mask_box(m) - b) <= tol
            nb = np.where(gap, widen(b, f, mask.shape), b)
            if np.allclose(nb, b):
                break
            b = nb
        return m, s, lg, b

    return rule


def lost_like(z, frac):
    """Pixels of the neighbour's mask lost on this slice that still look like the seed's organ
    (within ``z`` of its SDs): if they are more than ``frac`` of the mask, prompt again with the
    box of mask + them and keep the larger mask."""

    def rule(sl, mask, logits, prev, box, ctx):
        m, s, lg = sl.box(box)
        mean, sd = ctx["look"]
        img = np.asarray(ctx["image"], float)
        img = img.mean(-1) if img.ndim == 3 else img
        like = mask & ~m & (np.abs(img - mean) <= z * sd)
        if m.any() and like.sum() > frac * m.sum():
            b2 = mask_prompt(m | like, ctx)
            m2, s2, lg2 = sl.box(b2)
            if m2.sum() > m.sum():
                return m2, s2, lg2, b2
        return m, s, lg, box

    return rule


def average(fs=(0.0,), prev_weight=0.0, lenient_t=None, vote=False):
    """Average SAM's logits (or majority-vote its masks) over the product's box widened by each
    of ``fs``, the previous prompt box (weight ``prev_weight``) or the lenient box."""

    def rule(sl, mask, logits, prev, box, ctx):
        outs = [(1.0, sl.box(widen(box, f, mask.shape))) for f in fs]
        if prev_weight:
            outs.append((prev_weight, sl.box(prev)))
        if lenient_t is not None:
            outs.append((1.0, sl.box(mask_prompt(lenient_region(mask, logits, lenient_t, 1), ctx))))
        w = np.array([a for a, _ in outs]) / sum(a for a, _ in outs)
        score = float(sum(wi * o[1] for wi, (_, o) in zip(w, outs, strict=True)))
        if vote:
            m = sum(wi * o[0] for wi, (_, o) in zip(w, outs, strict=True)) >= 0.5
            return m, score, np.where(m, 1.0, -1.0), box
        lg = sum(wi * o[2] for wi, (_, o) in zip(w, outs, strict=True))
        return lg > 0, score, lg, box

    return rule


def box_pad(px):
    def rule(sl, mask, logits, prev, box, ctx):
        from casam.propagate import neighbour_prompt

        s = ctx["settings"].__class__(box_pad=px)
        b = neighbour_prompt(mask, None, s, ctx["margins"])["boxes"][0]
        return (*sl.box(b), b)

    return rule


def iou(a, b) -> float:
    u = np.count_nonzero(a | b)
    return 1.0 if u == 0 else np.count_nonzero(a & b) / u


RULES = {
    "product (mask box + seed margins, >= 2 px)": product,
    "box momentum 0.3": momentum(0.3),
    "box momentum 0.5": momentum(0.5),
    "box momentum 0.7": momentum(0.7),
    "box shrinks <= 2% a side a slice": shrink_limit(0.02),
    "box shrinks <= 5% a side a slice": shrink_limit(0.05),
    "box shrinks <= 10% a side a slice": shrink_limit(0.10),
    "box pad >= 1 px": box_pad(1.0),
    "box pad >= 3 px": box_pad(3.0),
    "box pad >= 4 px": box_pad(4.0),
    "box of neighbour's logits > -1": lenient(-1.0),
    "box of neighbour's logits > -2": lenient(-2.0),
    "box of neighbour's logits > -1, within 1 px": lenient(-1.0, 1),
    "box of neighbour's logits > -1, within 2 px": lenient(-1.0, 2),
    "box of neighbour's logits > -2, within 1 px": lenient(-2.0, 1),
    "box of logits > -1 grown into organ-like pixels (1 SD)": lenient_like(-1.0, 1.0),
    "box of logits > -1 grown into organ-like pixels (0.5 SD)": lenient_like(-1.0, 0.5),
    "box of logits > -1 grown into organ-like pixels (1 SD), within 1 px": lenient_like(
        -1.0, 1.0, 1
    ),
    "multimask: IoU with neighbour's mask": multimask("IoU with neighbour"),
    "multimask: area nearest neighbour's": multimask("area nearest neighbour's"),
    "multimask: largest confident, overlapping": multimask("largest"),
    "area < 0.95x: previous prompt box": reprompt(0.95, 0.0),
    "area < 0.9x: previous prompt box + 5%": reprompt(0.9, 0.05),
    "best SAM score of box +0, 5, 10%": best_score((0.0, 0.05, 0.1)),
    "best SAM score of box -5, 0, +5%": best_score((-0.05, 0.0, 0.05)),
    "widen the sides the mask touches by 5%": touch(0.05),
    "widen the sides the mask touches by 10%": touch(0.10),
    "lost organ-like pixels (1 SD, > 10%)": lost_like(1.0, 0.10),
    "lost organ-like pixels (0.5 SD, > 5%)": lost_like(0.5, 0.05),
    "lost organ-like pixels (2 SD, > 5%)": lost_like(2.0, 0.05),
    "mean logits of box -5, 0, +5%": average((-0.05, 0.0, 0.05)),
    "mean logits of box +0, 5, 10%": average((0.0, 0.05, 0.1)),
    "mean logits of box and previous prompt box": average(prev_weight=1.0),
    "mean logits of box and logits > -1 box (1 px)": average(lenient_t=-1.0),
    "vote of box -5, 0, +5%": average((-0.05, 0.0, 0.05), vote=True),
}


def seeds(gt: np.ndarray) -> dict[str, int]:
    ks = np.flatnonzero(gt.any((1, 2)))
    n = len(ks)
    return {
        "largest": int(np.argmax(gt.sum((1, 2)))),
        "quarter": int(ks[n // 4]),
        "three quarters": int(ks[(3 * n) // 4]),
    }


def run(p, vol, gt, k: int, rule) -> tuple[float, dict]:
    """Propagate from the GT box on slice ``k`` with ``rule`` carrying the prompt."""
    from casam.propagate import PropagateSettings, appearance, box_margins, stop_reason

    s = PropagateSettings()
    slices = {}

    def sl(j):
        if j not in slices:
            slices[j] = Slice(p, p.embed(vol[j]))
        return slices[j]

    box0 = box_of(gt[k])
    m0, _, lg0 = sl(k).box(box0)
    ctx = {"settings": s, "margins": box_margins(box0[None], m0, s), "look": appearance(vol[k], m0)}
    out, stops = np.zeros(gt.shape, bool), {}
    out[k] = m0
    for name, d in (("up", 1), ("down", -1)):
        mask, logits, prev, j, why = m0, lg0, box0, k + d, None
        while 0 <= j < len(vol) and not why:
            ctx["image"], ctx["neighbour image"] = vol[j], vol[j - d]
            m, score, lg, b = rule(sl(j), mask, logits, prev, mask_prompt(mask, ctx), ctx)
            shift = abs(appearance(vol[j], m)[0] - ctx["look"][0]) / max(ctx["look"][1], 1e-6)
            why = stop_reason(
                int(m.sum()), score, int(mask.sum()), s, shift=shift if m.any() else 0
            )
            if not why:
                out[j], mask, logits, prev, j = m, m, lg, np.asarray(b, float), j + d
        stops[name] = f"{why} at {j}" if why else "end of volume"
    return dice(out, gt), stops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "propagation-carry.json")
    )
    ap.add_argument("--rules", nargs="+", choices=list(RULES), help="only these (default: all)")
    args = ap.parse_args(argv)
    from casam.predictor import Predictor
    from casam.propagate import propagate

    p = Predictor(library=LIB, disk_cache=EMB_CACHE)
    data = {n: axial_volume(n) for n in VALIDATION}
    res = {"machine": machine(), "seeds": {n: seeds(gt) for n, (_, gt) in data.items()}}
    for n, (vol, gt) in data.items():  # the harness must reproduce the product
        k = res["seeds"][n]["largest"]
        want = dice(propagate(p, vol, k, box=box_of(gt[k]), task="sam").masks, gt)
        got = run(p, vol, gt, k, product)[0]
        assert abs(want - got) < 1e-9, (n, want, got)
    res["rules"] = {}
    for name in args.rules or RULES:
        row = {n: {sd: run(p, vol, gt, k, RULES[name]) for sd, k in res["seeds"][n].items()}
               for n, (vol, gt) in data.items()}  # fmt: skip
        d = {n: {sd: v[0] for sd, v in r.items()} for n, r in row.items()}
        row = {
            "dice": d,
            "stops": {n: {sd: v[1] for sd, v in r.items()} for n, r in row.items()},
            "mean_largest": float(np.mean([r["largest"] for r in d.values()])),
            "mean_all_seeds": float(np.mean([v for r in d.values() for v in r.values()])),
        }
        res["rules"][name] = row
        print(f"{row['mean_largest']:.3f} {row['mean_all_seeds']:.3f}  {name}", flush=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
