"""Choosing EWC's and LwF's weight on a validation split of the TRAINING slices (never the test).

Each task's training slices are split: every 4th is a validation slice, the rest train. For each
weight of the grid, one layer is trained through the first order's first ``tune_tasks`` tasks
(2 by default: the CPU budget) on those slices
(``sequential_stages``), and after each task it is scored on the validation slices of the tasks
seen so far; the weight with the highest Avg-IoU (quality.py's ``cl_metrics``: the mean over the
stages of the size-weighted mean validation IoU) is kept, ties going to the smaller weight. The
chosen weight is then used, with all training slices, for both orders. Results are kept in the
work folder (``tune-KIND.json``), the tuning layers too.
"""

from __future__ import annotations

import json

import numpy as np
from _baselines_train import sequential_stages
from _common import Samples, layer_scores
from quality import cl_metrics, log


def val_split(pairs: list) -> tuple[list, list]:
    """(fit, validation): every 4th slice validates."""
    return [x for i, x in enumerate(pairs) if i % 4 != 3], [
        x for i, x in enumerate(pairs) if i % 4 == 3
    ]


def _score_weight(kind: str, weight: float, su, order: list[str]) -> dict:
    split = {n: val_split(su.train[n]) for n in order}
    samples = {n: Samples.from_pairs(su.p, split[n][0]) for n in order}
    R = {}
    first = su.work / f"first-fit-{order[0]}.safetensors"
    stages = sequential_stages(
        kind, weight, su, order, samples.__getitem__, f"tune-{kind}-{weight:g}", first
    )
    for j, layer in enumerate(stages):
        for k in range(j + 1):
            vals = layer_scores(su.p, layer, split[order[k]][1])
            R[(k, j)] = float(np.mean([v[0] for v in vals]))
        log(
            f"tune {kind} {weight:g}: stage {j}, val IoU",
            [round(R[(k, j)], 3) for k in range(j + 1)],
        )
    m = cl_metrics(R, [len(split[n][1]) for n in order])
    return {"Avg-IoU": m["Avg"], "Last-IoU": m["Last"], "FF-IoU": m["FF"]}


def tune_weight(kind: str, grid: list[float], su, order: list[str]) -> dict:
    """{"chosen": weight, "val": {weight: {Avg-IoU, Last-IoU, FF-IoU}}, "order": order}."""
    path = su.work / f"tune-{kind}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for w in grid:
        if f"{w:g}" not in done:
            done[f"{w:g}"] = _score_weight(kind, w, su, order)
            path.write_text(json.dumps(done, indent=1))
    val = {k: done[k] for k in (f"{w:g}" for w in grid)}
    best = max(grid, key=lambda w: (round(val[f"{w:g}"]["Avg-IoU"], 6), -w))
    return {"chosen": best, "val": val, "order": order, "split": "every 4th training slice"}
