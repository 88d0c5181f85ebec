"""Choosing a task's layer on its own held-out slices: which rule keeps a task above plain SAM?

    nice -n 15 python benchmarks/layer_selection.py      # writes results/layer_selection.json

For each task of the quality benchmark (``datasets.DOMAIN_TASKS``), an Alignment Layer is
trained with the default schedule on the same training slices as ``quality.py`` (``fit``: at
most 16, evenly spread) and scored on

- ``val``: at most 8 other slices of the task's training split (never trained on; the task's
  held-out slices, as ``learn_task`` holds them out), and
- ``valaug``: two augmented copies of each ``val`` slice (intensity window, gamma, noise,
  shift, scale, flip: what changes between patients; ``routing.py``'s new-patient proxy, the
  same images, with their masks moved along), at epoch 8 only, and
- ``test``: the quality benchmark's test split (another patient for the two tumour tasks),

after epochs 4, 6 and 8 and at strengths 0 (plain SAM), 0.25, ..., 1 (as trained):
``z + a (layer(z) - z)``, which for one block is exactly ``casam.task_adapter.with_strength``.
A rule picks (epoch, strength) from the ``val`` columns only; the table reports its ``test``
IoU. A task without spare training slices (all of them in ``fit``) has no ``val``: every rule
keeps the layer as trained there. No test figure is used to pick anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, HERE, Samples, box_of, machine  # noqa: E402

EPOCHS = (4, 6, 8)
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def train_snapshots(bb, samples: Samples, s) -> dict[int, dict]:
    """The layer's state after each epoch of ``EPOCHS`` (the engine's loop, seed as learn_task)."""
    from casam.alignment import AlignmentLayer
    from casam.training import train_alignment

    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    layer = AlignmentLayer(s.blocks)
    layer.set_scale(samples.z)
    per_epoch = -(-len(samples) // s.batch_size)
    snaps = {}
    for pr in train_alignment(
        bb, samples.z, samples.boxes, samples.targets, s, layer=layer, gen=gen
    ):
        if pr.step % per_epoch == 0 and pr.epoch in EPOCHS:
            snaps[pr.epoch] = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    return snaps


@torch.no_grad()
def scores(p, layer, pairs) -> np.ndarray:
    """(len(STRENGTHS), N) IoU of each pair at each strength."""
    from casam.metrics import iou

    bb = p.backbone
    out = np.zeros((len(STRENGTHS), len(pairs)))
    for i, (img, m) in enumerate(pairs):
        e = p.embed(img)
        gt = np.asarray(m) > 0
        z = e.z[None].float()
        d = layer(z) - z
        bt = torch.from_numpy(e.geometry.boxes_to_input(box_of(gt)))
        for j, a in enumerate(STRENGTHS):
            logits, _ = bb.decode(z + a * d, bt)
            pred = (bb.upscale_masks(logits, e.geometry)[0] > 0).cpu().numpy()
            out[j, i] = iou(pred, gt)
    return out


def _best_aug(val, aug, pooled: bool) -> tuple[int, float]:
    """Epoch 8; the strength with the best mean IoU on the augmented copies (``pooled``: on the
    held-out slices and their copies together)."""
    if aug is None:
        return 8, 1.0
    score = aug.mean(1) if not pooled else np.concatenate([val[8], aug], axis=1).mean(1)
    j = max(range(len(STRENGTHS)), key=lambda j: (score[j], STRENGTHS[j]))
    return 8, STRENGTHS[j]


RULES = {
    "as trained (epoch 8, strength 1)": lambda v: (8, 1.0),
    "SAM or layer on held-out": lambda v: _best(v, epochs=(8,), strengths=(0.0, 1.0)),
    "strength on held-out (epoch 8)": lambda v: _best(v, epochs=(8,)),
    "epoch on held-out (strength 0 or 1)": lambda v: _best(v, strengths=(0.0, 1.0)),
    "epoch and strength on held-out": lambda v: _best(v),
}
#: Rules that also see the augmented held-out copies (val, valaug).
AUG_RULES = {
    "strength on augmented held-out (epoch 8)": lambda v, a: _best_aug(v, a, pooled=False),
    "strength on held-out + augmented (epoch 8)": lambda v, a: _best_aug(v, a, pooled=True),
}


def _best(val: dict, epochs=EPOCHS, strengths=STRENGTHS) -> tuple[int, float]:
    """The (epoch, strength) with the best mean val IoU (ties: later epoch, stronger)."""
    if val is None:
        return 8, 1.0
    cands = [(e, a) for e in epochs for a in strengths]
    return max(cands, key=lambda c: (val[c[0]][STRENGTHS.index(c[1])].mean(), c[1], c[0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--json", default=str(HERE / "results" / "layer_selection.json"))
    args = ap.parse_args(argv)
    import datasets
    import routing_data as rd

    from casam import LearnSettings, Predictor
    from casam.alignment import AlignmentLayer

    run = {"machine": machine(), "epochs": EPOCHS, "strengths": STRENGTHS, "tasks": {}}
    p = Predictor(library=False, disk_cache=EMB_CACHE)
    s = LearnSettings()
    all_tasks = rd.routing_tasks(args.data_cache, max_val=8)
    tasks = [t for t in all_tasks if t.name in datasets.DOMAIN_TASKS]
    for t in tasks:
        t0 = time.perf_counter()
        log(f"{t.name}: training on {len(t.fit)} slices ({len(t.val)} val, {len(t.test)} test)")
        snaps = train_snapshots(p.backbone, Samples.from_pairs(p, t.fit), s)
        res = {"n_fit": len(t.fit), "n_val": len(t.val), "n_test": len(t.test), "val": {}}
        res["test"] = {}
        for e, state in snaps.items():
            layer = AlignmentLayer(s.blocks)
            layer.load_state_dict(state)
            layer.eval()
            if t.val:
                res["val"][e] = scores(p, layer, t.val)
            res["test"][e] = scores(p, layer, t.test)
            if t.val and e == 8:
                i = [x.name for x in all_tasks].index(t.name)  # routing.py's valaug seed
                res["valaug"] = scores(p, layer, rd.augmented_pairs(t.val, 2, seed=100 + i))
        res["seconds"] = round(time.perf_counter() - t0, 1)
        run["tasks"][t.name] = res
        v8, t8 = res["val"].get(8), res["test"][8]
        log(
            f"  test SAM {t8[0].mean() * 100:.1f} layer {t8[-1].mean() * 100:.1f}"
            + (
                f"; val SAM {v8[0].mean() * 100:.1f} layer {v8[-1].mean() * 100:.1f}"
                if t.val
                else ""
            )
        )
    out = {"machine": run["machine"], "epochs": EPOCHS, "strengths": STRENGTHS, "tasks": {}}
    for n, r in run["tasks"].items():
        val = r["val"] or None
        out["tasks"][n] = {
            "n_fit": r["n_fit"],
            "n_val": r["n_val"],
            "n_test": r["n_test"],
            "seconds": r["seconds"],
            "val_iou": {str(e): (v.mean(1) * 100).round(2).tolist() for e, v in r["val"].items()},
            "test_iou": {str(e): (v.mean(1) * 100).round(2).tolist() for e, v in r["test"].items()},
            "valaug_iou": None
            if "valaug" not in r
            else (r["valaug"].mean(1) * 100).round(2).tolist(),
            "rules": {},
        }
        aug = r.get("valaug")
        for rule, pick in AUG_RULES.items():
            e, a = pick(val, aug)
            j = STRENGTHS.index(a)
            out["tasks"][n]["rules"][rule] = {
                "epoch": e,
                "strength": a,
                "val": None if aug is None else float(aug[j].mean() * 100),
                "test": float(r["test"][e][j].mean() * 100),
            }
        for rule, pick in RULES.items():
            e, a = pick(val)
            j = STRENGTHS.index(a)
            out["tasks"][n]["rules"][rule] = {
                "epoch": e,
                "strength": a,
                "val": None if val is None else float(val[e][j].mean() * 100),
                "test": float(r["test"][e][j].mean() * 100),
            }
    out["machine"]["load_avg_1m_at_end"] = round(__import__("os").getloadavg()[0], 2)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(render(out))
    return 0


def render(out: dict) -> str:
    rules = [*RULES, *AUG_RULES]
    L = ["| task | val / test slices | plain SAM (val / test) | " + " | ".join(rules) + " |"]
    L.append("|---|---|---|" + "---|" * len(rules))
    for n, r in out["tasks"].items():
        v0 = r["val_iou"].get("8", [None])[0]
        cells = []
        for rule in rules:
            x = r["rules"][rule]
            v = "–" if x["val"] is None else f"{x['val']:.1f}"
            cells.append(f"{v} / {x['test']:.1f} (e{x['epoch']}, {x['strength']:g})")
        sam = f"{'–' if v0 is None else f'{v0:.1f}'} / {r['test_iou']['8'][0]:.1f}"
        L.append(f"| {n} | {r['n_val']} / {r['n_test']} | {sam} | " + " | ".join(cells) + " |")
    L.append(
        "\nCells: IoU on the slices the rule chose on (held-out; for the augmented rules, the "
        "augmented copies) / test IoU (epoch, strength chosen). No rule sees a test figure."
    )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
