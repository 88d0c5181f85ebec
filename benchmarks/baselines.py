"""The baselines CA-SAM is measured against, on quality.py's real tasks (issue 15).

    python benchmarks/baselines.py                 # all 6 tasks, both orders (about 1 h here)
    python benchmarks/baselines.py --quick         # smoke run: 2 tasks
    python benchmarks/baselines.py --timing-only   # decode and training-step ms (quiet!)
    python benchmarks/baselines.py --add-to benchmarks/results/baselines.json  # EWC/LwF rows only

Same frozen backbone (LiteMedSAM), tasks, splits, ground-truth-box prompts, metrics and cached
embeddings as ``quality.py`` (imported, not copied). Methods:

- plain SAM; CA-SAM (``learn_task``'s per-task Alignment Layer, VAE router + SAM fallback);
- CA-SAM with **hard routing** (MoDA-like): argmin over the task VAEs, no threshold, no fallback;
- **decoder adapter** (SAM-DA style, the product's ``casam.decoder_adapter``) per task, routed by
  the same VAEs and thresholds as CA-SAM (only the adapter's place differs);
- **decoder tuning**: the whole mask decoder trained per task, routed the same way;
- **EWC** and **LwF** on ONE shared Alignment Layer trained task after task (exemplar-free),
  their weights tuned on a validation split of the training slices (``_baselines_tune``).

Every model is trained with the Alignment Layer's default schedule (``_baselines_train``) and
saved in ``--work`` as soon as it is trained: a re-run resumes and only evaluates. OOD: the
unseen-kind images of ``load_ood()`` (routing only) and test slices of two CT views no task
shows (``routing_data``'s coronal spleen and sagittal kidney: they have masks, so their IoU
under each routing is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baselines_eval import Evaluator, decode_ms, method_tables  # noqa: E402
from _baselines_report import write_section  # noqa: E402
from _baselines_train import (  # noqa: E402
    Seconds,
    per_task_model,
    sequential_stages,
    timing_models,
    train_step_ms,
)
from _baselines_tune import tune_weight  # noqa: E402
from _common import EMB_CACHE, HERE, Samples, evenly, load_ood, load_tasks, machine  # noqa: E402
from datasets import DOMAIN_TASKS  # noqa: E402
from quality import engine_fingerprint, learn_missing, log, settings_for, signature  # noqa: E402

QUICK_TASKS = ("MR breast lesion", "MR liver")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(DOMAIN_TASKS))
    ap.add_argument("--orders", default="forward,reverse")
    ap.add_argument("--max-train", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help=f"smoke run on {', '.join(QUICK_TASKS)}")
    ap.add_argument("--ood-masked", type=int, default=6, help="test slices per unseen CT view")
    ap.add_argument("--ewc-grid", default="0.1,1")
    ap.add_argument("--lwf-grid", default="1,10")
    ap.add_argument(
        "--eval-tasks",
        default=None,
        help="evaluate only these of --tasks (whose models are trained), same work folder",
    )
    ap.add_argument("--note", action="append", default=[], help="a note for the markdown")
    ap.add_argument("--skip", default="", help="parts not trained nor reported (e.g. ewc,lwf)")
    ap.add_argument("--learn-reverse", action="store_true", help="part casam: last task first")
    ap.add_argument("--tune-order", default="forward", help="the order EWC/LwF are tuned on")
    ap.add_argument("--tune-tasks", type=int, default=2, help="tasks of the weight tuning")
    ap.add_argument("--epochs", type=int, default=None, help="override (smoke runs only)")
    ap.add_argument(
        "--parts",
        default=None,
        help=f"only train (and score) these comma-separated parts of {','.join(PARTS)}, then "
        "exit: separate processes share the work; a later full run only evaluates",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (parallel parts: 1)")
    ap.add_argument(
        "--timing-only",
        action="store_true",
        help="only decode and training-step ms, on untrained models of each kind (a module's "
        "cost is its architecture's, not its weights'); added to --json's run if it exists",
    )
    ap.add_argument("--repeats", type=int, default=30, help="timed decodes per method")
    ap.add_argument("--work", default="~/.cache/napari-casam/bench-baselines")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=str(HERE.parent / "docs" / "benchmark-quality.md"))
    ap.add_argument("--render", metavar="JSON", default=None, help="only re-write the section")
    ap.add_argument(
        "--add-to",
        metavar="JSON",
        default=None,
        help="train and score only EWC/LwF and add their rows to this earlier full run's JSON "
        "(refused unless plain SAM's figures agree: same embeddings, tasks and splits)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks = ",".join(QUICK_TASKS)
    if args.json is None:
        name = "baselines-quick.json" if args.quick else "baselines.json"
        args.json = str(HERE / "results" / name)
    return args


def part_name(args) -> str:
    """What one process writes its seconds and scores under (parallel parts never share one)."""
    name = (args.parts or "all").replace(",", "+") + ("-rev" if args.learn_reverse else "")
    return name if args.orders == "forward,reverse" else f"{name}-{args.orders.replace(',', '+')}"


class Setup:
    """Tasks, splits, the predictor with CA-SAM's library, samples and the work folder."""

    def __init__(self, args):
        from casam import Predictor, TaskLibrary

        self.names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        tasks = {t.name: t for t in load_tasks()}
        unknown = [n for n in self.names if n not in tasks]
        if unknown:
            raise SystemExit(f"unknown tasks {unknown}; known: {', '.join(tasks)}")
        self.train = {n: evenly(tasks[n].train, args.max_train) for n in self.names}
        self.test = {n: list(tasks[n].test) for n in self.names}
        if args.eval_tasks:  # the work folder stays that of --tasks
            sig_names = self.names
            self.names = [t.strip() for t in args.eval_tasks.split(",") if t.strip()]
            if not set(self.names) <= set(sig_names):
                raise SystemExit(f"--eval-tasks must be among --tasks: {', '.join(sig_names)}")
        else:
            sig_names = self.names
        self.s = settings_for("default", [f"epochs={args.epochs}"] if args.epochs else [])
        sig = signature([self.s.to_dict(), args.max_train, sig_names, engine_fingerprint()])
        self.work = Path(args.work).expanduser() / f"default-{sig}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.p = Predictor(library=TaskLibrary(self.work / "lib-all"), disk_cache=EMB_CACHE)
        self.bb = self.p.backbone
        self.secs = Seconds(self.work, part_name(args))
        self.samples = {n: Samples.from_pairs(self.p, self.train[n]) for n in self.names}
        self.ood = load_ood()
        self.ood_masked = unseen_views(args.ood_masked)

    def learn_casam(self, reverse: bool = False) -> list[str]:
        """Learn the tasks the library lacks (``reverse``: last task first, so two processes
        can share the work); returns those learned here."""
        names = self.names[::-1] if reverse else self.names
        learned = learn_missing(self.p, names, self.train, self.s)
        for n, sec in learned.items():
            self.secs.put(f"casam:{n}", sec)
        self.p.reload_library()
        return list(learned)


def unseen_views(n: int) -> dict[str, list]:
    """Test slices (with masks) of the two CT views no task shows: routing_data's extra tasks."""
    import routing_data

    return {t.name: evenly(t.test, n) for t in routing_data._reformat_tasks(None)} if n else {}


def orders_of(spec: str, names: list[str]) -> list[tuple[str, list[str]]]:
    from quality import order_list

    return [order_list(o.strip(), names) for o in spec.split(",") if o.strip()]


PARTS = ("casam", "adapter", "decoder", "ewc", "lwf")


def per_task_part(su: Setup, kind: str, ev_part: str | None, models: dict) -> None:
    for n in su.names:
        log(f"{kind}: '{n}' ...")
        models[f"{kind}:{n}"] = per_task_model(
            kind, su.bb, n, su.samples[n], su.s, su.work, su.secs
        )
    if ev_part:  # its own tasks' test images (the routed run reuses these scores)
        ev = Evaluator(su, models, ev_part)
        for n in su.names:
            for i, pr in enumerate(su.test[n]):
                ev.score(("test", n, i), pr, f"{kind}:{n}")
        ev.save()


def sequential_part(su: Setup, kind: str, args, orders, ev_part: str | None, models: dict):
    """Tune the weight (forward order's first tasks, validation slices), then train both
    orders; with ``ev_part`` also score every stage on the test images of the tasks so far."""
    vals = [float(x) for x in getattr(args, f"{kind}_grid").split(",") if x.strip()]
    tune_order = orders_of(args.tune_order, su.names)[0][1]
    weight = tune_weight(kind, vals, su, tune_order[: args.tune_tasks])
    log(f"{kind}: weight {weight['chosen']:g} (validation {weight['val']})")
    ev = Evaluator(su, models, ev_part) if ev_part else None
    for oname, order in orders:
        tag = f"{kind}-{weight['chosen']:g}-{oname}"
        first = su.work / f"first-all-{order[0]}.safetensors"
        stages = sequential_stages(
            kind, weight["chosen"], su, order, su.samples.__getitem__, tag, first
        )
        for j, layer in enumerate(stages):
            key = f"{kind}:{oname}:{j}"
            models[key] = layer
            for k in range(j + 1 if ev else 0):
                for i, pr in enumerate(su.test[order[k]]):
                    ev.score(("test", order[k], i), pr, key)
            log(f"{kind} {oname}: stage {j} done")
    if ev:
        ev.save()
    return weight


def train_all(su: Setup, args, orders, parts, ev_part=None) -> tuple[dict, dict]:
    """The models of ``parts`` (trained or loaded): {key: module}, and EWC/LwF's weights."""
    models, weights = {}, {}
    if "casam" in parts:
        learned = su.learn_casam(args.learn_reverse)
        models.update({f"casam:{n}": su.p.layer(n) for n in su.names})
        if ev_part:
            ev = Evaluator(su, models, ev_part)
            for n in learned:
                for i, pr in enumerate(su.test[n]):
                    for key in (None, f"casam:{n}"):
                        ev.score(("test", n, i), pr, key)
            ev.save()
    for kind in ("adapter", "decoder"):
        if kind in parts:
            per_task_part(su, kind, ev_part, models)
    for kind in ("ewc", "lwf"):
        if kind in parts:
            weights[kind] = sequential_part(su, kind, args, orders, ev_part, models)
    return models, weights


def add_sequential(su: Setup, args, orders, parts: list[str]) -> int:
    """``--add-to``: EWC/LwF (trained or loaded) scored over both orders, their rows added to an
    earlier full run, whose other rows, routing and costs stay as they were measured."""
    from _baselines_eval import SEQUENTIAL, order_table

    t0 = time.perf_counter()
    models, weights = train_all(su, args, orders, parts)
    run = json.loads(Path(args.add_to).read_text())
    ev = Evaluator(su, models)
    methods = ["plain SAM", *[m for m, k in SEQUENTIAL.items() if k in weights]]
    for o in run["orders"]:
        new = order_table(su, ev, o["name"], o["order"], methods)
        for col, v in new["table"]["plain SAM"].items():
            if abs(v - o["table"]["plain SAM"][col]) > 0.01:
                raise SystemExit(
                    f"plain SAM's {col} in order {o['name']} is {v:.3f} here and "
                    f"{o['table']['plain SAM'][col]:.3f} in {args.add_to}: not the same "
                    "embeddings or splits; run the full benchmark instead"
                )
        for m in methods[1:]:
            o["table"][m] = new["table"][m]
            o["per_task_last"][m] = new["per_task_last"][m]
    ev.save()
    run["weights"] = {**run.get("weights", {}), **weights}
    run["train_seconds"] = {**run["train_seconds"], **su.secs.data}
    mach = machine()
    mach["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    run["sequential_run"] = {"machine": mach, "seconds": round(time.perf_counter() - t0, 1)}
    run["notes"] = run.get("notes", []) + args.note
    Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    write_section(Path(args.md), run)
    print(json.dumps({o["name"]: o["table"] for o in run["orders"]}, indent=1))
    return 0


def timing_only(su: Setup, args) -> int:
    """``--timing-only``: decode ms per box and training ms per step of every kind, measured on
    freshly built models (EWC/LwF train and decode one Alignment Layer: CA-SAM's costs). Written
    to ``<json>.timing.json`` and, where the full run's JSON exists, into it as ``timing`` (its
    markdown section is rendered again)."""
    models = timing_models(su)
    machine_now = machine()
    timing = {
        "machine": machine_now,
        "decode_ms": decode_ms(su, models, args.repeats),
        "train_step_ms": train_step_ms(su, models),
    }
    timing["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    log(f"timing: {timing}")
    path = Path(args.json)
    path.with_suffix(".timing.json").write_text(json.dumps(timing, indent=1))
    if path.is_file():
        run = json.loads(path.read_text())
        run["timing"] = timing
        path.write_text(json.dumps(run, indent=1, default=str))
        write_section(Path(args.md), run)
    print(json.dumps({k: timing[k] for k in ("decode_ms", "train_step_ms")}, indent=1))
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.render:
        run = json.loads(Path(args.render).read_text())
        run["notes"] = run.get("notes", []) + args.note
        Path(args.render).write_text(json.dumps(run, indent=1, default=str))
        write_section(Path(args.md), run)
        return 0
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    su = Setup(args)
    orders = orders_of(args.orders, su.names)
    log(f"work folder {su.work}")
    if args.parts:
        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        bad = [x for x in parts if x not in PARTS]
        if bad:
            raise SystemExit(f"unknown parts {bad}; choose from {', '.join(PARTS)}")
        train_all(su, args, orders, parts, ev_part=part_name(args))
        return 0
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    if args.add_to:
        return add_sequential(su, args, orders, [k for k in ("ewc", "lwf") if k not in skip])
    if args.timing_only:
        return timing_only(su, args)
    models, weights = train_all(su, args, orders, [x for x in PARTS if x not in skip])
    run = {"machine": machine(), "backbone": su.bb.identity, "settings": su.s.to_dict()}
    run["decode_ms"] = decode_ms(su, models, args.repeats) if args.repeats else {}
    log(f"decode ms per box: {run['decode_ms']}")
    ev = Evaluator(su, models)
    run.update(method_tables(su, ev, orders, models, weights))
    for n in su.names:  # a learn_task interrupted before learn_missing returned: its own record
        secs = su.p.task_infos[n].settings.get("train_seconds")
        su.secs.data.setdefault(f"casam:{n}", secs)
    run["train_seconds"] = su.secs.data
    run["seconds_total"] = round(time.perf_counter() - t_start, 1)
    run["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    run["quick"] = args.quick
    run["notes"] = args.note
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(run, indent=1, default=str))
    if not args.quick:
        write_section(Path(args.md), run)
    print(json.dumps({o["name"]: o["table"] for o in run["orders"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
