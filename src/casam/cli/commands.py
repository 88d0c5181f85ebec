"""The ``casam`` sub-commands: one ``cmd_*`` function per command, given the parsed arguments."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from casam.batch import eval_summary
from casam.batch_cli import run_batch, wants_batch
from casam.errors import InputError


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )


def _library(args: argparse.Namespace, create: bool = True) -> Any:
    from casam.library import TaskLibrary

    return TaskLibrary(args.library, create=create)


def _predictor(args: argparse.Namespace) -> Any:
    from casam.predictor import Predictor

    return Predictor(
        args.backbone,
        checkpoint=args.checkpoint,
        device=args.device,
        library=_library(args),
        disk_cache=args.cache,
        router=args.router,
    )


def _check_task_choice(args: argparse.Namespace) -> None:
    """Refuse a ``--task`` the library has no task of that name for (read from metadata)."""
    from casam.checkpoints import backbone_identity
    from casam.routing import AUTO, SAM, check_known

    if args.task in (AUTO, SAM, "SAM"):
        return
    model = backbone_identity(args.backbone, args.checkpoint)
    tasks = _library(args).tasks(model)
    check_known(args.task, {t.name: t.threshold for t in tasks if t.active}, model)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# ---- commands ----------------------------------------------------------------------------
def _learn_settings(args: argparse.Namespace) -> Any:
    """LearnSettings from the defaults (or the paper's) and the options given."""
    from casam.config import LearnSettings

    base = LearnSettings.paper() if args.paper else LearnSettings()
    from casam.cli.parser import LEARN_SETTING_OPTIONS

    names = ("adapter", *LEARN_SETTING_OPTIONS)
    overrides = {
        k: getattr(args, k) for k in (*names, "threshold_margin") if getattr(args, k) is not None
    }
    return LearnSettings.from_dict({**base.to_dict(), **overrides})


def cmd_learn(args: argparse.Namespace) -> int:
    from casam.cli.learn_progress import LearnDisplay
    from casam.io import read_learning_pairs
    from casam.library import validate_name
    from casam.progress import drive
    from casam.training import iter_learn_task

    name = validate_name(args.name)
    lib = _library(args)
    if not (args.overwrite or args.extend):
        lib.ensure_free(name)
    elif (
        args.extend
        and args.adapter not in (None, "auto")
        and name in lib
        and lib.info(name).adapter != args.adapter
    ):
        raise InputError(
            f"task '{name}' has the {lib.info(name).adapter} adapter and is extended with it; "
            "leave out --adapter (or learn a new task under another name)"
        )
    settings = _learn_settings(args)
    pairs, skipped = read_learning_pairs(
        args.images, args.masks, settings.min_images, settings.folds, args.label, args.extend
    )
    p = _predictor(args)
    print(
        f"learning '{name}' from {len(pairs)} annotated slices ({skipped} empty skipped) "
        f"on {p.backbone.identity}, encoder {p.backbone.runtime.describe()}",
        file=sys.stderr,
    )
    gen = iter_learn_task(
        [x.image for x in pairs],
        [x.mask for x in pairs],
        name,
        predictor=p,
        settings=settings,
        overwrite=args.overwrite,
        extend=args.extend,
        image_names=[x.name for x in pairs],
        estimate=True,
    )
    kind = lib.info(name).adapter if args.extend else settings.adapter
    display = LearnDisplay(settings.epochs, adapter=kind)
    try:
        info = drive(gen, display)
    finally:
        display.close()
    gain = info.iou_gain
    print(
        f"task '{info.name}' saved to {lib.root}: {info.adapter} adapter, "
        f"{info.n_images} training slices, "
        f"threshold {info.threshold:.4g}; held-out IoU ({info.n_holdout} slices): "
        f"SAM {_fmt(info.iou_sam)} -> task {_fmt(info.iou_task)}"
        + (f" ({gain:+.3f})" if gain is not None else "")
        + (
            f", layer at strength {info.settings['strength']:g} (chosen on them)"
            if info.settings.get("strength", 1.0) < 1
            else ""
        )
        + _kinds_note(info.settings.get("kind_iou"))
        + f"; {info.settings.get('train_seconds', 0):.0f} s"
        + (f" (estimated {display.estimate.total:.0f} s)" if display.estimate else "")
    )
    return 0


def _kinds_note(kind_iou: dict | None) -> str:
    """ ", adapter kind chosen on them (alignment 0.856, decoder 0.886)" when "auto" trained
    both kinds; empty otherwise."""
    if not kind_iou:
        return ""
    return (
        ", adapter kind chosen on them ("
        + ", ".join(f"{k} {_fmt(v)}" for k, v in kind_iou.items())
        + ")"
    )


def _image_slices(paths: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    from casam.io import expand_paths, read_slices, slice_names

    out = []
    for path in expand_paths(paths, "IMAGE"):
        slices = read_slices(path)
        out.extend(zip(slice_names(path, len(slices)), slices, strict=True))
    return out


def cmd_route(args: argparse.Namespace) -> int:
    if wants_batch(args, "route"):
        return run_batch(args, "route")
    items = _image_slices(args.images)
    p = _predictor(args)
    with _progress(len(items), "route") as bar:
        for name, img in items:
            route = p.set_image(img)
            if args.json:
                print(json.dumps(route.to_json(name)), flush=True)
            else:
                print(f"{name}\t{route}", flush=True)
            bar.update()
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from casam.io import (
        check_mask_path,
        check_slice_mask_target,
        expand_paths,
        read_slices_with_geometry,
        write_slice_mask,
    )
    from casam.preprocess import check_boxes

    if wants_batch(args, "segment"):
        return run_batch(args, "segment")
    path = expand_paths(args.image, "IMAGE")
    if len(path) != 1:
        raise InputError(f"IMAGE: give one image file, not a folder of {len(path)} files")
    slices, geo = read_slices_with_geometry(path[0])
    if args.slice is None and len(slices) > 1:
        raise InputError(
            f"{path[0]} holds {len(slices)} slices; choose one with --slice K "
            f"(0..{len(slices) - 1})"
        )
    k = args.slice or 0
    if not 0 <= k < len(slices):
        raise InputError(
            f"--slice {k} is out of range: {path[0]} has {len(slices)} slices "
            f"(0..{len(slices) - 1})"
        )
    from casam.cli.volume import segment_prompts, segment_volume

    boxes, points, labels = segment_prompts(args)
    # Everything that can be refused is refused before a model is built (seconds, not minutes).
    if boxes is not None:
        check_boxes(boxes, *slices[k].shape[:2])
    _check_task_choice(args)
    if args.propagate:
        return segment_volume(args, path[0], slices, k, boxes, points, labels, geo)
    if not check_slice_mask_target(args.out, geo):
        check_mask_path(args.out)
    p = _predictor(args)
    p.set_image(slices[k])
    pred = p.predict(boxes, task=args.task, points=points, labels=labels)
    mask = pred.masks.any(axis=0)
    out = write_slice_mask(args.out, mask, k, geo)
    used = pred.task or "SAM"
    print(
        f"{out}: {int(mask.sum())} pixels, task {used} ({pred.route}), SAM score "
        f"{float(pred.scores.max()):.3f}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from casam.io import read_pairs
    from casam.metrics import boundary_iou, iou
    from casam.preprocess import mask_box

    if wants_batch(args, "eval"):
        return run_batch(args, "eval")
    if not args.masks:
        raise InputError("--masks: give one mask file per image file")
    pairs, skipped = read_pairs(args.images, args.masks, args.label)
    if not pairs:
        raise InputError("--masks: every mask slice is empty; there is nothing to evaluate")
    _check_task_choice(args)
    p = _predictor(args)
    ious, bious, tasks = [], [], []
    with _progress(len(pairs), "eval") as bar:
        for pair in pairs:
            p.set_image(pair.image)
            pred = p.predict(mask_box(pair.mask), task=args.task)
            ious.append(iou(pred.masks[0], pair.mask))
            bious.append(boundary_iou(pred.masks[0], pair.mask))
            tasks.append(pred.task or "sam")
            bar.update()
    result, text = eval_summary(ious, bious, tasks, skipped)
    print(json.dumps(result) if args.json else text)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    return run_batch(args, "embed")


def cmd_tasks(args: argparse.Namespace) -> int:
    lib = _library(args, create=False)
    identity = None
    if args.backbone != "all":
        from casam.checkpoints import backbone_identity

        identity = backbone_identity(args.backbone, args.checkpoint)
    tasks = lib.tasks(identity)
    if args.json:
        print(json.dumps([{**t.to_json(), "active": t.active} for t in tasks]))
    elif not tasks:
        print(f"no tasks in {lib.root}")
    else:
        print(
            f"{'task':24} {'adapter':9} {'images':>6} {'threshold':>9} {'IoU SAM':>8} "
            f"{'IoU task':>8}  created               backbone"
        )
        for t in tasks:
            note = "" if t.active else "  (other backbone: not used for routing)"
            print(
                f"{t.name[:24]:24} {t.adapter:9} {t.n_images:6d} {t.threshold:9.4g} "
                f"{_fmt(t.iou_sam):>8} "
                f"{_fmt(t.iou_task):>8}  "
                f"{t.created[:19]}   {t.backbone}{note}"
            )
    if args.verify:
        for msg in lib.problems():
            print(f"casam: warning: {msg}", file=sys.stderr)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    lib = _library(args, create=False)
    lib.remove(args.name)
    print(f"removed task '{args.name}' from {lib.root}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    lib = _library(args, create=False)
    problems = lib.problems()
    for msg in problems:
        print(msg)
    n = len(lib.tasks())
    print(f"{lib.root}: {n} task(s) readable, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def cmd_recalibrate(args: argparse.Namespace) -> int:
    from casam.task_router import recalibrate

    lib = _library(args, create=False)
    names = args.task or lib.names()
    for name in dict.fromkeys(names):  # unknown names fail before any task changes
        lib.info(name)
    if not names:
        print(f"no tasks in {lib.root}")
    for name in dict.fromkeys(names):
        old = lib.info(name)
        new = lib.update_info(name, recalibrate)
        if args.json:
            keys = ("threshold", "knn_threshold", "format_version")
            print(
                json.dumps({"task": name, **{k: [getattr(old, k), getattr(new, k)] for k in keys}})
            )
            continue
        knn = "-" if old.knn_threshold is None else f"{old.knn_threshold:.4g}"
        print(
            f"task '{name}': neighbour threshold {knn} -> {new.knn_threshold:.4g}, VAE threshold "
            f"{old.threshold:.4g} -> {new.threshold:.4g}, format {old.format_version} -> "
            f"{new.format_version}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = _library(args, create=False).export(args.name, args.dest)
    print(f"exported task '{args.name}' to {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    info = _library(args).import_task(args.source, name=args.name, overwrite=args.overwrite)
    print(f"imported task '{info.name}' ({info.backbone}) into {info.path.parent}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from casam.checkpoints import download_checkpoint

    path = download_checkpoint(args.backbone, args.dir)
    print(f"{path} (SHA-256 verified); use: --backbone {args.backbone} --checkpoint {path}")
    return 0
