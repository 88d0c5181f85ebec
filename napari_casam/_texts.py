"""Every text the dock shows: tooltips, card texts, progress lines and number formatting.

Qt-free (the model and the views both read it), as micro-sam keeps its tooltips in one module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
SAM = "sam"
NA = "–"


def fmt(x: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; None, NaN and non-numbers read "–"."""
    v = _float(x)
    return NA if v is None else f"{v:.{digits}f}"


def fmt_g(x: Any) -> str:
    """A number with three significant digits (scores, thresholds); missing reads "–"."""
    v = _float(x)
    return NA if v is None else f"{v:.3g}"


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---- tooltips -------------------------------------------------------------------------------
TIPS: dict[str, str] = {
    "volume_box": "Clinical volumes opened with napari-casam (NIfTI, NRRD, MHA, DICOM): CT display "
    "windows, and saving the masks on the scan's own grid",
    "ct_window": "Display window in HU for CT; what the model sees is not affected (it always "
    "uses the 0.5-99.5 percentile window)",
    "save_masks": "Save the masks layer on the scan's own grid and affine (.nii.gz, .nrrd, .mha), "
    "or as a DICOM SEG referencing the DICOM series (.dcm)",
    "image": "Image to segment. The dock adds a “boxes” Shapes layer (draw rectangles on it) "
    "and a “masks” Labels layer (results; correct them with napari's label tools).",
    "hint": "Shortcuts on the boxes layer: R rectangle mode (napari), Ctrl+Z undo / "
    "Ctrl+Shift+Z redo the last segmentation, Shift+I interpolate between two boxes, "
    "Shift+E prepare the volume.",
    "override": "Automatic: the router picks the task (or plain SAM) per slice. Or force plain "
    "SAM, or one task, for every box.",
    "auto_route": "Compute the embedding and the routing of the slice you stop on in the "
    "background, so the card is always up to date and the next box answers at once.",
    "prepare": "Compute the embeddings of every slice now (Shift+E), so each box later answers "
    "instantly. Cancel stops it; what was computed stays cached.",
    "interpolate": "Segment every slice between two boxes of the same structure drawn on two "
    "slices (the two selected boxes, else the last two), as one undoable step (Shift+I).",
    "job_bar": "Background work: model loading, embeddings, segmentation.",
    "job_cancel": "Stop preparing the volume or interpolating.",
    "status": "Outcome and timing of the last segmentation.",
    "card": "Which learned task segments the slice in view. The router scores the image "
    "embedding against each task's stored training images (distance to the nearest one, lower "
    "= more familiar) and shows it as a share of the task's threshold, with the runner-up; "
    "above 100% the image is unlike the task's training images, and plain SAM is used instead "
    "(SAM fallback).",
    "learn_box": "Teach CA-SAM a new kind of image from your corrected masks.",
    "library_box": "Tasks learned with the active backbone.",
    "model_box": "Backbone, device and task library folder (remembered).",
    "labels": "Labels layer with the corrected masks of the selected image. Every slice with "
    "labels is a training image; every label value on it is one object.",
    "task_name": "Name of the task (the kind of images and structure, e.g. “CT spleen”).",
    "adapter": "What the task trains on the frozen SAM. Alignment Layer: a small network on the "
    "image embedding (CA-SAM), better on organs (CT liver IoU 87 against 81). Decoder adapter: "
    "small adapters inside SAM's mask decoder (SAM-DA), better on lesions (MR brain tumour 55 "
    "against 43). Automatic: the Alignment Layer, and where it gains under 2 IoU points on the "
    "held-out slices the decoder adapters too, keeping the better one. Routing is the same for "
    "all; Extend keeps the task's own kind.",
    "mode": "New: a task of a new name. Retrain: learn the named task again from these slices "
    "only. Extend: learn it again from its previous images plus these slices.",
    "epochs": "Passes over the training objects and their augmented copies (each slice again "
    "with another contrast, noise, a small shift, a flip). More epochs fit better and take longer "
    "(about 1 s per object per epoch on a laptop CPU).",
    "learn": "Train a task from the image and its masks in the background. The viewer stays "
    "usable.",
    "learn_cancel": "Stop training; nothing is saved.",
    "also_learn": "Tick other open images (e.g. other patients) to learn the task from them "
    "too, each with its own Labels layer. Slices without labels are skipped.",
    "also_labels": "Labels layer with the corrected masks of this image (same shape).",
    "learn_files": "Learn the task from image and mask files or folders on disk, read exactly "
    "as “casam learn --images … --masks …” reads them, without opening them in napari.",
    "files_intro": "One mask file or folder per image file or folder, in the same order: a "
    "DICOM series folder with its DICOM SEG or NIfTI mask, NIfTI/NRRD/MHA image and mask "
    "pairs, or 2-D images and stacks (.tif, .png, .npy). Folders are read in name order; slices "
    "with empty masks are skipped.",
    "files_request": "The task name, mode, adapter and epochs set in the dock's learn section.",
    "files_images": "Image files, or folders of them (a DICOM folder is one series).",
    "files_masks": "The mask of each image: a label volume on the image's grid, a DICOM SEG "
    "of the series, or 2-D masks matching the image slices.",
    "files_learn": "Read the files in the background and train the task; a file that cannot "
    "be used stops it with one line saying why, and nothing is saved.",
    "learn_progress": "Training stage, epoch, loss and steps.",
    "learn_result": "Outcome of the last training.",
    "table": "Tasks learned with the active backbone: training images, router threshold "
    "(the paper's VAE rule, ELBO), IoU on held-out images of plain SAM → the task. A task's "
    "name tells when it was created.",
    "rename": "Give the selected task another name.",
    "delete": "Delete the selected task from the library (asks first).",
    "import": "Add a task exported elsewhere (a .casamtask file).",
    "export": "Save the selected task as a single .casamtask file to share.",
    "backbone": "Frozen SAM model that computes image embeddings and masks. LiteMedSAM ships "
    "with the plugin and runs on a laptop CPU; SAM ViT-B/L/H and MedSAM need their official "
    "checkpoint file. Tasks are tied to the backbone they were learned with.",
    "checkpoint": "Local weight file of the chosen backbone (official .pth).",
    "checkpoint_btn": "Choose the backbone's checkpoint file.",
    "device": "Where the model runs. auto = CUDA GPU, then Apple MPS, then CPU. GPUs appear "
    "here once the model has been loaded.",
    "library": "Folder of the task library (learned tasks). Share it, or export single tasks, "
    "to use the same tasks at another site.",
    "library_btn": "Choose another task library folder.",
    "disk_cache": "Store every computed embedding in the per-user cache folder (about 2 MB per "
    "slice), so a volume opened again answers at once in a later session.",
    "model_status": "State of the model (loads in the background on first use).",
}

HINT = (
    "Draw a rectangle around a structure on the <b>boxes</b> layer: it is segmented at once "
    "on the slice in view. Ctrl+Z on the boxes layer undoes it."
)
DEVICE_TITLES = {"auto": "auto", "cpu": "CPU", "cuda": "CUDA GPU", "mps": "Apple MPS"}


# ---- the routing card ---------------------------------------------------------------------
@dataclass(frozen=True)
class RouteText:
    headline: str
    detail: str
    kind: str
    """"task", "fallback", "override" or "unknown" (chooses the colour)."""


def describe_route(route: Any, override: str = AUTO, auto_route: bool = False) -> RouteText:
    """Words for a ``casam.RouteDecision`` (or None: not routed yet) and the user's override.

    ``override`` is "auto" (follow the router), "sam" (plain SAM) or a task name;
    ``auto_route`` says whether the slice in view is routed on its own.
    """
    router = "not computed yet" if route is None else str(route)
    if override == SAM:
        return RouteText("Plain SAM (your choice)", f"Router: {router}", "override")
    if override != AUTO:
        return RouteText(f"{override} (your choice)", f"Router: {router}", "override")
    if route is None:
        how = (
            "routing it now…" if auto_route else "draw a box, or turn on “Route the slice in view”"
        )
        return RouteText(
            "Not routed yet",
            f"The slice in view is routed once its embedding is computed ({how}).",
            "unknown",
        )
    detail = route.detail  # the engine's words: casam.routing.RouteDecision.detail
    return RouteText(route.headline, detail[:1].upper() + detail[1:] + ".", route.kind)


def where_text(name: str, index: tuple[int, ...], n_slices: int) -> str:
    """Where a plane is, as napari's slider shows it: "name · slice k / last" (0-based)."""
    if not index:
        return name
    if len(index) == 1:
        return f"{name} · slice {index[0]} / {n_slices - 1}"
    return f"{name} · plane {index}"


# ---- jobs and segmentation ------------------------------------------------------------------
def busy_text(what: str, seconds: float) -> str:
    return f"{what} ({seconds:.0f} s)" if seconds >= 1 else what


def segmented_text(
    n_new: int,
    used: str,
    seconds: float,
    embed_seconds: float,
    empty: int,
    low: int = 0,
    replaced: int = 0,
) -> str:
    """The status line after a segmentation (new masks, replaced ones, empty, doubtful)."""
    msg = f"{plural(n_new, 'mask')} with {used} in {seconds:.2f} s"
    if replaced:
        msg += f"; {plural(replaced, 'mask')} replaced (the box was redrawn over it)"
    if embed_seconds > 0.3:
        msg += f" (embedding {embed_seconds:.1f} s)"
    if empty:
        msg += f"; {empty} box(es) gave no new pixels"
    if low:
        msg += "; " + low_confidence_text(low)
    return msg + "."


def low_confidence_text(n: int) -> str:
    return "low confidence: check " + ("this mask" if n == 1 else f"these {n} masks")


def time_left(seconds: float) -> str:
    """ "about 40 s left", "about 3 min left"."""
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s left"
    return f"about {seconds / 60:.0f} min left"


# ---- learning -------------------------------------------------------------------------------
STAGES = {
    "plan": "Timing this machine",
    "embed": "Embedding slices",
    "align": "Training the Alignment Layer",
    "vae": "Training the router",
    "evaluate": "Measuring held-out IoU",
    "second": "Little gain: trying decoder adapters too",
    "save": "Saving",
}
MODES = (
    ("new", "New task"),
    ("replace", "Retrain (replace the task)"),
    ("extend", "Extend (add these slices)"),
)
#: What a task can train (``casam.config.ADAPTER_CHOICES``), in the dock's words.
ADAPTERS = (
    ("auto", "Automatic (best of both)"),
    ("alignment", "Alignment Layer (organs)"),
    ("decoder", "Decoder adapter (lesions)"),
)


def adapter_title(kind: str) -> str:
    """A task's adapter kind in the dock's words (short: no advice)."""
    return {"alignment": "Alignment Layer", "decoder": "decoder adapter"}.get(kind, kind)


def describe_progress(
    p: Any, epochs: int | None = None, adapter: str = "alignment"
) -> tuple[str, int, int]:
    """Progress text and (value, maximum) for one engine ``Progress`` (or a str); ``adapter``:
    the kind being trained."""
    if isinstance(p, str):
        return p, 0, 0
    stage = getattr(p, "stage", "")
    parts = [STAGES.get(stage, str(stage))]
    if stage == "align" and adapter == "decoder":
        parts = ["Training the decoder adapters"]
    epoch = getattr(p, "epoch", None)
    if epoch is not None and stage in ("align", "second"):
        parts.append(f"epoch {epoch} of {epochs}" if epochs else f"epoch {epoch}")
    loss = _float(getattr(p, "loss", None))
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    total = int(getattr(p, "total", 0) or 0)
    step = min(int(getattr(p, "step", 0) or 0), total)
    if total:
        parts.append(f"{step}/{total}")
    return " · ".join(parts), step, total


def shape_text(shape: Any) -> str:
    """An array shape as people write it: ``29×512×512``."""
    return "×".join(str(int(n)) for n in shape)


def learning_from(name: str, n_images: int, n_layers: int, skipped: int) -> str:
    """The line shown when a training from open layers starts."""
    text = f"Learning “{name}” from {n_images} annotated images"
    if n_layers > 1:
        text += f" of {n_layers} image layers"
    if skipped and n_layers > 1:
        text += f" ({skipped} slices without labels skipped)"
    return text + "…"


def no_labels_yet(labels_names: list[str]) -> str:
    """Why nothing can be learned: none of the chosen Labels layers has a label."""
    if len(labels_names) == 1:
        return f"“{labels_names[0]}” has no labels yet: segment and correct some slices first."
    names = ", ".join(f"“{n}”" for n in labels_names)
    return f"None of {names} has labels yet: segment and correct some slices first."


def learning_from_files(name: str, n_pairs: int, skipped: int) -> str:
    """The learn panel's line once the files are read (the estimate follows it)."""
    return (
        f"Learning “{name}” from {plural(n_pairs, 'annotated slice')} of files "
        f"({skipped} empty skipped)…"
    )


def files_request(name: str, mode_title: str, epochs: int, adapter_title: str = "") -> str:
    """What the files dialog will learn: the dock's task name, mode, adapter and epochs."""
    task = f"“{name}”" if name else "no name yet (give one in the dock)"
    kind = f" · {adapter_title}" if adapter_title else ""
    return f"Task: {task} · {mode_title}{kind} · {plural(epochs, 'epoch')}"


def files_read(n_pairs: int, skipped: int) -> str:
    """Progress line once the files of a "Learn from files…" training are read."""
    return f"Read {plural(n_pairs, 'annotated slice')} ({skipped} empty skipped)"


def describe_estimate(p: Any) -> str:
    """The message shown when learning starts: how long it will take here (the parts, as
    ``casam learn`` prints them, would not fit the narrow dock)."""
    from casam.progress import duration

    total = _float(getattr(getattr(p, "estimate", None), "total", None))
    if total is None:
        return f"Estimated time: {getattr(p, 'message', '')}."
    return f"Estimated time: about {duration(total)} on this machine."


def describe_result(info: Any, seconds: float) -> str:
    """One line for the dock after a task was learned."""
    kind = getattr(info, "adapter", "alignment")
    head = (
        f"Learned “{info.name}” from {info.n_images} images ({info.n_objects} objects) "
        f"in {seconds:.0f} s" + (f" ({adapter_title(kind)})." if kind != "alignment" else ".")
    )
    if info.iou_task is None or info.iou_sam is None:
        return head + " No images were held out, so no IoU was measured."
    n = getattr(info, "n_holdout", None)
    on = f" on {n} held-out images" if n else " on held-out images"
    ious = f" IoU{on}: SAM {fmt(info.iou_sam)} → task {fmt(info.iou_task)}."
    return head + ious + kinds_note(info) + strength_note(info) + "\n" + expected_gain(info)


def kinds_note(info: Any) -> str:
    """Said when learning tried both adapter kinds (``LearnSettings.adapter`` "auto": the
    Alignment Layer gained little on the held-out images); empty otherwise."""
    kinds = (getattr(info, "settings", None) or {}).get("kind_iou") or {}
    if len(kinds) < 2:
        return ""
    tried = ", ".join(f"{adapter_title(k)} {fmt(v, 3)}" for k, v in kinds.items())
    kept = adapter_title(getattr(info, "adapter", "alignment"))
    return f" Both adapter kinds were tried there ({tried}); the {kept} is kept."


def strength_note(info: Any) -> str:
    """Said when learning kept the layer below its trained strength (chosen on the held-out
    images, ``LearnSettings.choose_strength``); empty otherwise."""
    a = (getattr(info, "settings", None) or {}).get("strength", 1.0)
    if a is None or a >= 1:
        return ""
    if a == 0:
        return " The trained layer did worse there than plain SAM, so the task uses plain SAM."
    return f" The layer is kept at {a:.0%} of its trained strength, the best there."


def expected_gain(info: Any) -> str:
    """The learn summary's line on what the task is expected to add: its held-out IoU gain
    over plain SAM in points, for the number of slices it was trained on (the learning curve
    of docs/benchmark-quality.md shows how that grows with more slices)."""
    gain = (info.iou_task - info.iou_sam) * 100
    slices = plural(info.n_images, "slice")
    if gain <= 0:
        return (
            f"No gain on held-out slices yet ({gain:+.1f} IoU points, learning curve: {slices}); "
            "correct more slices and extend the task."
        )
    return f"Expected gain on held-out slices: {gain:+.1f} IoU points (learning curve: {slices})."


# ---- the task table -------------------------------------------------------------------------
COLUMNS = ("Task", "Images", "Threshold", "IoU", "Created")
#: Hidden in the narrow dock (the task name's tooltip says when it was created).
HIDDEN_COLUMNS = (4,)
EXPORT_FILTER = "CA-SAM task (*.casamtask)"


def task_row(info: Any) -> list[str]:
    """The table cells of one ``casam.TaskInfo``."""
    iou = f"{fmt(info.iou_sam)}→{fmt(info.iou_task)}"
    created = str(getattr(info, "created", ""))[:10]
    return [info.name, str(info.n_images), fmt_g(info.threshold), iou, created]


def iou_tip(info: Any) -> str:
    return (
        f"Held-out IoU on {getattr(info, 'n_holdout', '?')} images: plain SAM "
        f"{fmt(info.iou_sam, 3)}, with the task {fmt(info.iou_task, 3)}"
    )


def model_status(title: str, device: str, n_tasks: int, identity: str, runtime: str = "") -> str:
    text = f"{title} on {device} · {plural(n_tasks, 'task')} · {identity}"
    return text + (f" · encoder: {runtime}" if runtime else "")
