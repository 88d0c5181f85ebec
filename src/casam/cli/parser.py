"""The argument tables of ``casam`` (one sub-parser per command)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from casam import __version__
from casam.batch_cli import add_options
from casam.cli import commands as c
from casam.config import ADAPTER_CHOICES

EXIT_USAGE = 2

EXAMPLES = """examples:
  casam learn --name "CT spleen" --images scans/ --masks labels/  # learn (per-user library)
  casam route scans/patient7.nii.gz                    # which task handles each slice
  casam segment ct.png --box 40 60 120 150 --out m.png # a mask from a box (routed)
  casam tasks                                          # the tasks of the library
  casam download sam_vit_b                             # fetch SAM ViT-B (then --checkpoint)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: ``casam learn``'s schedule options: each is a ``LearnSettings`` field of the same name (its flag
#: is the name with dashes); ``commands._learn_settings`` reads them, ``cli.FLAGS`` maps errors
#: about them back to their flag.
LEARN_SETTING_OPTIONS = (
    "blocks",
    "epochs",
    "augment",
    "lr",
    "batch_size",
    "vae_steps",
    "holdout",
    "auto_gain",
    "seed",
)


def build_parser() -> argparse.ArgumentParser:
    from casam.backbones import BACKBONES
    from casam.routing import DEFAULT_ROUTER, ROUTERS, SCORE_HELP

    parser = _Parser(
        prog="casam",
        description="CA-SAM: SAM with per-task Alignment Layers and a VAE router.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
            sp.add_argument(
                "--router",
                default=DEFAULT_ROUTER,
                choices=ROUTERS,
                help="knn (default): nearest stored training image of each task; paper: the "
                "paper's VAE rule",
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
    sp.add_argument(
        "--adapter",
        choices=ADAPTER_CHOICES,
        default=None,
        help="what the task trains: alignment = the Alignment Layer on the embedding (best on "
        "organs), decoder = small adapters inside SAM's mask decoder (best on lesions), auto "
        "(default) = the Alignment Layer, and decoder adapters too where it gains under 2 IoU "
        "points on the held-out slices, the better one kept; --extend keeps the task's own",
    )
    sp.add_argument("--blocks", type=int, help="CAResBlocks in the Alignment Layer")
    sp.add_argument("--epochs", type=int)
    sp.add_argument(
        "--augment",
        type=int,
        help="augmented copies of each training slice the layer also trains on (default 2; "
        "0: the real slices only)",
    )
    sp.add_argument("--lr", type=float)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--vae-steps", type=int)
    sp.add_argument(
        "--holdout", type=float, help="share of slices held out to measure IoU (default 0.2)"
    )
    sp.add_argument(
        "--threshold-margin",
        type=float,
        help="routing threshold = this x the 97th percentile of the 5-fold scores; higher "
        "accepts more of a new patient's slices, lower sends more to plain SAM "
        "(default 1.5, paper 1)",
    )
    sp.add_argument(
        "--auto-gain",
        type=float,
        help="with --adapter auto: the held-out IoU gain of the Alignment Layer under which "
        "decoder adapters are trained too (default 0.02)",
    )
    sp.add_argument("--seed", type=int)
    sp.add_argument("--overwrite", action="store_true", help="replace a task of the same name")
    sp.add_argument(
        "--extend", action="store_true", help="continue training an existing task with more slices"
    )
    sp.set_defaults(func=c.cmd_learn)

    sp = sub.add_parser(
        "route",
        help="show which task each image goes to",
        description=f"{SCORE_HELP} The JSON output gives the closest task (best), its score, "
        "threshold and their ratio, the runner-up's ratio and, for a SAM fallback, the reason.",
    )
    common(sp)
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--json", action="store_true", help="one JSON object per image per line")
    add_options(sp, "route")
    sp.set_defaults(func=c.cmd_route)

    sp = sub.add_parser("embed", help="fill the embedding cache for images (reused by all runs)")
    common(sp)
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--json", action="store_true", help="one JSON object per input per line")
    add_options(sp, "embed")
    sp.set_defaults(func=c.cmd_embed)

    sp = sub.add_parser("segment", help="segment the object in a box")
    common(sp)
    sp.add_argument("image", nargs="+", metavar="IMAGE")
    sp.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        default=None,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box in image pixels (repeat for several objects; their masks are merged)",
    )
    sp.add_argument(
        "--point",
        nargs=2,
        type=float,
        action="append",
        metavar=("X", "Y"),
        help="a positive click on the object, image pixels of the slice (repeatable)",
    )
    sp.add_argument(
        "--negative-point",
        nargs=2,
        type=float,
        action="append",
        metavar=("X", "Y"),
        help="a negative click: not the object (repeatable)",
    )
    sp.add_argument("--task", default="auto", help="auto (route), sam (plain SAM) or a task name")
    sp.add_argument("--slice", type=int, default=None, help="slice index for a volume")
    sp.add_argument(
        "--propagate",
        action="store_true",
        help="segment the structure through the whole volume from the prompt on --slice",
    )
    sp.add_argument(
        "--out",
        required=True,
        help="mask file to write (.png, .tif, .npy); for a volume IMAGE also .nii.gz, .nrrd, .mha "
        "or .dcm (DICOM SEG): a volume on the image's grid (with --propagate the whole structure, "
        "else zero except slice K); with several inputs, a folder for <name>.tif",
    )
    add_options(sp, "segment")
    sp.set_defaults(func=c.cmd_segment)

    sp = sub.add_parser("eval", help="IoU of box prompts (each mask's bounding box) against masks")
    common(sp)
    sp.add_argument("--images", nargs="+", required=True, metavar="PATH")
    sp.add_argument("--masks", nargs="+", default=None, metavar="PATH")
    sp.add_argument("--label", type=int, default=None)
    sp.add_argument("--task", default="auto", help="auto (route), sam (plain SAM) or a task name")
    sp.add_argument("--json", action="store_true")
    add_options(sp, "eval")
    sp.set_defaults(func=c.cmd_eval)

    sp = sub.add_parser("tasks", help="list the tasks of a library")
    common(sp, model=False)
    sp.add_argument(
        "--backbone",
        default="litemedsam",
        help="mark tasks of this backbone as active ('all': no marking)",
    )
    sp.add_argument("--checkpoint", type=Path, default=None)
    sp.add_argument("--json", action="store_true")
    sp.add_argument(
        "--verify",
        action="store_true",
        help="also read every task's weights and warn about each task that cannot be used "
        "(the listing itself reads only metadata and builds no model)",
    )
    sp.set_defaults(func=c.cmd_tasks)

    sp = sub.add_parser("remove", help="delete a task")
    common(sp, model=False)
    sp.add_argument("name")
    sp.set_defaults(func=c.cmd_remove)

    sp = sub.add_parser(
        "check", help="verify every task (metadata, files, digests); exit 1 on any problem"
    )
    common(sp, model=False)
    sp.set_defaults(func=c.cmd_check)

    sp = sub.add_parser(
        "recalibrate",
        help="recompute tasks' routing thresholds from their stored features (no images)",
        description="Recompute each task's routing thresholds from the pooled features it "
        "stores (no images needed): the default router's neighbour threshold and the paper "
        "rule's VAE threshold (its folds are trained again, a few seconds per task). A task "
        "learned before task format 2 gets a neighbour threshold on its one stored view. "
        "Each task is rewritten atomically; its weights are kept as they are.",
    )
    common(sp, model=False)
    sp.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="NAME",
        help="a task to recalibrate (repeatable; default: every task)",
    )
    sp.add_argument("--json", action="store_true", help="one JSON object per task per line")
    sp.set_defaults(func=c.cmd_recalibrate)

    sp = sub.add_parser("export", help="write a task as one .casamtask file")
    common(sp, model=False)
    sp.add_argument("name")
    sp.add_argument("dest", type=Path)
    sp.set_defaults(func=c.cmd_export)

    sp = sub.add_parser("import", help="add a task from a .casamtask file or task folder")
    common(sp, model=False)
    sp.add_argument("source", type=Path)
    sp.add_argument("--name", default=None, help="store it under another name")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=c.cmd_import)
    sp = sub.add_parser("download", help="download an official SAM checkpoint (checksum verified)")
    sp.add_argument("backbone", choices=[k for k, v in BACKBONES.items() if v.download_url])
    sp.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder to put it in (default: the per-user data folder)",
    )
    sp.set_defaults(func=c.cmd_download)
    return parser
