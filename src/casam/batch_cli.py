"""The batch side of ``casam route | eval | segment | embed``: many inputs, ``--scheduler``.

A command takes this path when it is given ``--scheduler``, ``--resume``, a manifest, or (for
``segment``) more than one image; otherwise the command runs exactly as before. Results are
printed in input order, a failed input prints its one-line message in the results, and the exit
code is the number of failed inputs (at most 125).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from casam.batch import Outcome, Unit, collect, error_line, is_manifest, merge_eval, with_outputs
from casam.errors import InputError

MAX_EXIT = 125


def add_options(sp: argparse.ArgumentParser, command: str) -> None:
    """``--scheduler`` (and ``--resume`` where a command writes files) for one subcommand."""
    sp.add_argument(
        "--scheduler",
        metavar="SPEC",
        default=None,
        help="run the inputs in parallel on Dask: local, local:N (N worker processes; default one "
        "per 2 cores) or tcp://HOST:PORT of a running scheduler",
    )
    if command in ("segment", "embed"):
        sp.add_argument(
            "--resume",
            action="store_true",
            help="skip inputs whose output already exists and verifies",
        )


def _inputs(args: argparse.Namespace, command: str) -> list[str]:
    return [str(x) for x in (args.images if command in ("route", "eval", "embed") else args.image)]


def wants_batch(args: argparse.Namespace, command: str) -> bool:
    """True when the batch path must run (else: the command's own serial code, unchanged)."""
    inputs = _inputs(args, command)
    return bool(
        getattr(args, "scheduler", None)
        or getattr(args, "resume", False)
        or command == "embed"
        or any(is_manifest(x) for x in inputs)
        or (command == "segment" and len(inputs) > 1)
    )


def _units(args: argparse.Namespace, command: str) -> list[Unit]:
    units = collect(_inputs(args, command), getattr(args, "masks", None))
    if command == "eval" and any(u.mask is None for u in units):
        raise InputError("--masks: give one mask file per image file (or a mask in the manifest)")
    if command == "segment":
        if args.slice is not None:
            units = [Unit(u.index, u.image, u.mask, u.boxes, args.slice) for u in units]
        units = with_outputs(units, args.out)
    return units


def _predictor_kwargs(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from casam.config import default_cache_dir
    from casam.library import TaskLibrary

    cache = args.cache
    if cache is None and command == "embed":
        cache = default_cache_dir()
    return {
        "backbone": args.backbone,
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint.absolute()),
        "device": args.device,
        "router": args.router,
        "library": str(TaskLibrary(args.library).root),
        "disk_cache": None if cache is None else str(cache.expanduser().absolute()),
    }


def _opts(args: argparse.Namespace, command: str) -> dict[str, Any]:
    return {
        "json": bool(getattr(args, "json", False)),
        "label": getattr(args, "label", None),
        "task": getattr(args, "task", "auto"),
        "boxes": getattr(args, "box", None),
        "resume": bool(getattr(args, "resume", False)),
    }


def _show(o: Outcome, as_json: bool) -> None:
    for line in o.lines if o.ok else [error_line(o, as_json)]:
        print(line, flush=True)


def run_batch(args: argparse.Namespace, command: str) -> int:
    """Run ``command`` over every input; print results in input order; exit code = failures."""
    from casam.runner import execute, load_cluster

    if args.scheduler is not None:
        load_cluster(args.scheduler)
    units = _units(args, command)
    as_json = bool(getattr(args, "json", False))
    show = (lambda o: None) if command == "eval" else (lambda o: _show(o, as_json))
    outcomes = execute(
        command,
        units,
        _opts(args, command),
        _predictor_kwargs(args, command),
        args.scheduler,
        show,
    )
    failed = [o for o in outcomes if not o.ok]
    if command == "eval":
        for o in failed:
            print(f"casam: error: {o.error}", file=sys.stderr)
        result, text = merge_eval(outcomes)
        print(json.dumps(result) if as_json else text)
    if failed:
        print(f"casam: {len(failed)} of {len(units)} inputs failed", file=sys.stderr)
    return min(len(failed), MAX_EXIT)
