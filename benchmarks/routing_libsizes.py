"""The routing floor on libraries of every size, not only the benchmark's 8 tasks (issue 12).

    python benchmarks/routing_libsizes.py            # seconds: cached pooled views only

``routing.py`` chose the shipped design's floor on one library of 8 tasks, where an image of a
learned kind is usually closest to its own task and the runner-up separation guards the floor.
A user's library starts with one task and grows: with one task there is no runner-up, and with
a few, the kind an image belongs to is often not in the library at all. Here every non-empty
subset of the routing benchmark's 8 tasks (255 libraries) is routed with the shipped design at
each candidate floor (separation as shipped), on the validation splits (the slices, their
augmented copies: the new-patient proxy, and the validation OOD images) and the test splits.
For each image:

- its task in the library: *own*, *wrong* (another task) or plain SAM;
- its task not in the library: a kind never learned. Taken by a task of another modality
  (CT / MR / microscopy) is *cross-modality*, a clear error; taken by a task of the same
  modality (e.g. the sagittal kidney task for a coronal spleen slice of the same CT scan) is
  counted apart: an image-level router sees the scan, not the structure the box is drawn on;
- OOD images (photographs, X-ray, ...): *taken* if any task takes them.

The floor is chosen on validation alone: no validation image to a wrong task or across
modalities and no validation OOD image taken, in any library; then the largest own share over
the validation slices and their augmented copies, pooled over all libraries. Writes
results/routing-libsizes.json and a section of docs/benchmark-quality.md. A quality figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, machine  # noqa: E402

BEGIN, END = "<!-- routing_libsizes.py: begin -->", "<!-- routing_libsizes.py: end -->"
FLOORS = (0.0, 0.015, 0.0175, 0.02, 0.0225, 0.025, 0.0275, 0.03)
COUNTS = ("own", "n_own", "wrong", "cross", "same", "n_absent", "ood", "n_ood")


def route_library(data: dict, tasks, d, split: str, cache: dict) -> dict[str, int]:
    """Counts of one library's routing of ``split`` (see the module docstring)."""
    import routing_designs as rdz

    lib = dict(data, tasks=list(tasks))
    model = rdz.fitted(d, lib, cache)
    modality = {t.name: t.modality for t in data["tasks"]}
    c = dict.fromkeys(COUNTS, 0)
    for t in data["tasks"]:
        routes, _ = rdz.routes_of(model, lib, t.name, split, d)
        if t.name in model:
            c["own"] += sum(r == t.name for r in routes)
            c["wrong"] += sum(r is not None and r != t.name for r in routes)
            c["n_own"] += len(routes)
        else:
            c["n_absent"] += len(routes)
            for r in routes:
                if r is not None:
                    c["same" if modality[r] == t.modality else "cross"] += 1
    if split != "valaug":
        routes, _ = rdz.routes_of(model, lib, "ood", split, d)
        c["ood"] += sum(r is not None for r in routes)
        c["n_ood"] += len(routes)
    return c


def sweep(data: dict) -> list[dict]:
    import routing_designs as rdz

    shipped = next(x for x in rdz.widened() if x.name == rdz.SHIPPED)
    cache: dict = {}
    rows = []
    for floor in FLOORS:
        d = dataclasses.replace(shipped, floor=floor, name=f"floor {floor:g}")
        for split in ("val", "valaug", "test"):
            by_size = {}
            for size in range(1, len(data["tasks"]) + 1):
                tot = dict.fromkeys(COUNTS, 0)
                for tasks in itertools.combinations(data["tasks"], size):
                    for k, v in route_library(data, tasks, d, split, cache).items():
                        tot[k] += v
                by_size[size] = tot
            rows.append({"floor": floor, "split": split, "by_size": by_size})
    return rows


def total(row: dict) -> dict[str, int]:
    return {k: sum(s[k] for s in row["by_size"].values()) for k in COUNTS}


def choose(rows: list[dict]) -> float:
    """The floor validation picks (see the module docstring); ties to the smaller floor."""
    best, key = None, None
    for floor in FLOORS:
        v, a = (total(r) for r in rows if r["floor"] == floor and r["split"] in ("val", "valaug"))
        if v["wrong"] or a["wrong"] or v["cross"] or a["cross"] or v["ood"]:
            continue
        own = (v["own"] + a["own"]) / max(v["n_own"] + a["n_own"], 1)
        if key is None or round(own, 9) > key:
            best, key = floor, round(own, 9)
    return best


def pct(a: int, n: int) -> str:
    return f"{100 * a / n:.1f}%" if n else "-"


def render(run: dict) -> str:
    m = run["machine"]
    out = [
        "## The floor on libraries of every size (`benchmarks/routing_libsizes.py`)\n",
        f"Machine: {m['cpu']}, {m['cores']} cores; {m['date']}; load average "
        f"{m['load_avg_1m_at_start']} -> {m.get('load_avg_1m_at_end')}. Cached pooled views of "
        "the routing benchmark (no encoder call). Every non-empty subset of its 8 tasks (255 "
        "libraries) routed with the shipped design at each floor (separation 1.1). Counts are "
        "pooled over the libraries: *own* / *wrong* for images whose task is in the library; "
        "for the others (a kind the library never learned) *cross-modality* (taken by a CT task "
        "for an MR slice, ...) and *same modality* (taken by another task of the same modality: "
        "an image-level router sees the scan, not the structure); *OOD taken*: unseen-kind "
        "images given to a task. Chosen on validation (no validation image wrong or across "
        "modalities, no validation OOD image taken, in any library; then the largest own share "
        f"over validation slices and their augmented copies): **floor {run['chosen']:g}**.\n",
    ]
    for note in run.get("notes", []):
        out.append(f"> {note}\n")
    out.append(
        "| floor | split | own | wrong | cross-modality | same modality | OOD taken | "
        "1-task libraries: own / cross / OOD | 8 tasks: own / wrong / OOD |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in run["rows"]:
        t, one, eight = total(r), r["by_size"]["1"], r["by_size"]["8"]
        mark = "**" if r["floor"] == run["chosen"] else ""
        out.append(
            f"| {mark}{r['floor']:g}{mark} | {r['split']} | {pct(t['own'], t['n_own'])} | "
            f"{t['wrong']} | {t['cross']} of {t['n_absent']} | {t['same']} | "
            f"{t['ood']} of {t['n_ood']} | {pct(one['own'], one['n_own'])} / {one['cross']} / "
            f"{one['ood']} | {eight['own']}/{eight['n_own']} / {eight['wrong']} / "
            f"{eight['ood']} |\n"
        )
    return "".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-cache", default=None)
    ap.add_argument("--json", default=str(HERE / "results" / "routing-libsizes.json"))
    ap.add_argument("--md", default=str(HERE.parent / "docs" / "benchmark-quality.md"))
    ap.add_argument("--note", action="append", default=[], help="a note for the markdown")
    args = ap.parse_args(argv)
    from routing import build_features, write_section

    run: dict = {"machine": machine(), "floors": list(FLOORS), "notes": args.note}
    data = build_features(args.data_cache)
    rows = sweep(data)
    run["chosen"] = choose(rows)
    run["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    # JSON keys are strings: render from the same form a re-read file has
    run["rows"] = json.loads(json.dumps(rows))
    Path(args.json).write_text(json.dumps(run, indent=1))
    section = render(run)
    if args.md:
        write_section(Path(args.md), section, BEGIN, END)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
