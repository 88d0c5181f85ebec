"""Which adapter kind should a task keep? Both kinds scored on a task's own held-out slices,
their augmented copies and its test split (issue 12: "strictly above plain SAM on every task").

    python benchmarks/quality.py                                        # Alignment Layers
    python benchmarks/quality.py --set adapter=decoder --orders forward --train-only casam
    python benchmarks/adapter_kind.py ALIGNMENT_LIB DECODER_LIB         # the two lib-all folders

For each task of the quality benchmark (``datasets.DOMAIN_TASKS``) the two libraries' layers of
the same schedule (``quality.py``'s work folders, ``lib-all``; each layer at the strength its
learner chose) are scored with the ground-truth box on

- ``val``: the task's held-out slices (at most 8 other training slices, as ``learn_task``
  holds them out; none where every training slice is used),
- ``valaug``: two augmented copies of each (intensity window, gamma, noise, shift, scale, flip:
  ``routing.py``'s new-patient proxy, masks moved along),
- ``test``: the quality benchmark's test split (another patient for the two tumour tasks),

and plain SAM beside them. Writes results/adapter-kind.json. A quality figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import EMB_CACHE, HERE, heldout_iou, machine  # noqa: E402

KINDS = ("alignment", "decoder")
#: its section of docs/benchmark-quality.md (written by hand from the JSON; quality.py keeps it)
BEGIN, END = "<!-- adapter_kind.py: begin -->", "<!-- adapter_kind.py: end -->"


def score(p, pairs, task: str | None) -> float | None:
    """Mean IoU in points of ``task`` (None: plain SAM) on (image, mask) pairs; None if none."""
    return round(100 * heldout_iou(p, pairs, task)[0], 2) if pairs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("alignment", help="a library of Alignment-Layer tasks (quality.py lib-all)")
    ap.add_argument("decoder", help="a library of decoder-adapter tasks of the same schedule")
    ap.add_argument("--json", default=str(HERE / "results" / "adapter-kind.json"))
    args = ap.parse_args(argv)
    import datasets
    import routing_data as rd

    from casam import Predictor, TaskLibrary

    preds = {
        k: Predictor(library=TaskLibrary(Path(getattr(args, k))), disk_cache=EMB_CACHE)
        for k in KINDS
    }
    tasks = [t for t in rd.routing_tasks(None, max_val=8) if t.name in datasets.DOMAIN_TASKS]
    run: dict = {"machine": machine(), "libraries": {k: getattr(args, k) for k in KINDS}}
    for i, t in enumerate(tasks):
        aug = rd.augmented_pairs(t.val, 2, seed=100 + i) if t.val else []
        row = {}
        for split, pairs in (("val", t.val), ("valaug", aug), ("test", t.test)):
            row[split] = {"sam": score(preds["alignment"], pairs, None)}
            row[split].update({k: score(p, pairs, t.name) for k, p in preds.items()})
        run.setdefault("tasks", {})[t.name] = row
        print(t.name, json.dumps(row), flush=True)
    Path(args.json).write_text(json.dumps(run, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
