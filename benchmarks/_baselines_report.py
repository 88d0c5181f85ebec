"""The baselines' section of docs/benchmark-quality.md, between its two markers (the rest of the
file belongs to quality.py and routing.py and is left as it is)."""

from __future__ import annotations

from pathlib import Path

BEGIN = "<!-- baselines: begin -->"
END = "<!-- baselines: end -->"
COLS = ("Last-IoU", "Avg-IoU", "FF-IoU", "Last-BIoU", "Avg-BIoU", "FF-BIoU")


def write_section(md: Path, run: dict) -> None:
    """Replace the text between the markers (or append the section at the end)."""
    old = md.read_text() if md.is_file() else ""
    block = f"{BEGIN}\n{render(run)}{END}\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    md.write_text(new)


def _f(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _pct(v) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def _weight(w: dict, kind: str) -> str:
    if kind not in w:
        return "**not run in this run** (see the note above)"
    return f"weight {w[kind]['chosen']:g} chosen from {', '.join(w[kind]['val'])}"


def _header(run: dict) -> list[str]:
    m, w, par = run["machine"], run["weights"], run["parameters"]
    return [
        "## Baselines (`benchmarks/baselines.py`, issue 15)\n",
        "Written by `python benchmarks/baselines.py` (protocol in its docstring); the same tasks, "
        "splits, ground-truth boxes, metrics and frozen LiteMedSAM as the tables above. "
        f"{m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m_at_start']} at start, "
        f"{m.get('load_avg_1m_at_end')} at end; {m['date']}.\n",
        "- Schedule: every model is trained by `casam.training.train_alignment` with the Alignment "
        f"Layer's default schedule ({run['settings']['epochs']} epochs, batch "
        f"{run['settings']['batch_size']}, box jitter, cosine decay, bf16 where native), on the "
        "same 16 training slices per task. Learning rate 1e-3, except decoder tuning: 1e-4 (Adam "
        "at 1e-3 on pre-trained decoder weights is the usual way to wreck them).",
        f"- Decoder adapter (SAM-DA style): a bottleneck adapter (256 -> 32, GELU, 32 -> 256, "
        "zero-initialised, residual) after each of the 4 sub-layers (self-attention, "
        "token-to-image attention, MLP, image-to-token attention) of both two-way blocks and the "
        f"final attention: {par['decoder adapter']:,} trainable parameters per task, against the "
        f"Alignment Layer's {par['Alignment Layer (CA-SAM, EWC, LwF)']:,} and the whole "
        f"decoder's {par['decoder tuning']:,} (whole backbone {par['whole backbone']:,}). "
        "Routed by CA-SAM's own VAEs and thresholds.",
        "- EWC: online, diagonal empirical Fisher of each task's training slices (normalised to "
        "mean 1) computed at the end of the task, summed over tasks, anchor = the latest layer; "
        f"{_weight(w, 'ewc')}. LwF: the squared difference of the new and previous layer's "
        "outputs on the current task's embeddings, in units of the embedding RMS; "
        f"{_weight(w, 'lwf')}. Weights chosen by Avg-IoU on a validation split of the training "
        "slices (every 4th), first tasks of the forward order, never the test split.",
        "- Hard routing (MoDA-like): the task whose VAE scores lowest, no threshold, no "
        "fallback.\n",
    ]


def _sequential_run(run: dict) -> list[str]:
    """The line of a later run that added EWC/LwF (``baselines.py --add-to``), if any."""
    sr = run.get("sequential_run")
    if not sr:
        return []
    m = sr["machine"]
    flags = ", ".join(k for k, v in m.get("cpu_flags", {}).items() if v) or "no flags read"
    return [
        f"EWC and LwF rows: added by a later run (`--add-to`) on {m['cpu']} ({flags}), "
        f"{m['cores']} cores, {m['date']}. It recomputed plain SAM's figures on the same "
        "embeddings and splits and found them equal to the rows above (it refuses otherwise).\n"
    ]


def _order_tables(run: dict) -> list[str]:
    L = []
    for o in run["orders"]:
        L.append(f"### Order {o['name']}: " + " -> ".join(o["order"]) + "\n")
        L.append("| method | " + " | ".join(COLS) + " |")
        L.append("|---|" + "---|" * len(COLS))
        for meth, row in o["table"].items():
            L.append(f"| {meth} | " + " | ".join(_f(row.get(c)) for c in COLS) + " |")
        L.append("\nFinal IoU per task:\n")
        meths = list(o["per_task_last"])
        L.append("| task | " + " | ".join(meths) + " |")
        L.append("|---|" + "---|" * len(meths))
        for n in o["order"]:
            cells = [f"{o['per_task_last'][m][n][0]:.1f}" for m in meths]
            L.append(f"| {n} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def _single_and_ood(run: dict) -> list[str]:
    L = ["### Single task (each task's own model, no routing): IoU / BIoU\n"]
    st = run["single_task"]
    cols = list(next(iter(st.values())))
    L.append("| task | " + " | ".join(cols) + " |")
    L.append("|---|" + "---|" * len(cols))
    for n, row in st.items():
        L.append(
            f"| {n} | " + " | ".join(f"{row[c][0]:.1f} / {row[c][1]:.1f}" for c in cols) + " |"
        )
    L.append("\n### Routing with all tasks learned\n")
    L.append(
        "| routing | known: own task | known: SAM | known: wrong task | OOD images to SAM | "
        "unseen CT views to SAM | OOD images went to |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for label, r in run["routing"].items():
        went = ", ".join(f"{t}: {c}" for t, c in r["ood_tasks"].items()) or "–"
        L.append(
            f"| {label} | {_pct(r['own'])} | {_pct(r['fallback'])} | {_pct(r['wrong'])} | "
            f"{_pct(r['ood_to_sam'])} | {_pct(r['views_to_sam'])} | {went} |"
        )
    L.append(
        f"\nOOD images: the {run['ood_images']} unseen-kind images of `load_ood()` (no masks). "
        "Unseen CT views: test slices of the abdominal CT's coronal spleen and sagittal "
        "kidney reformats (routing_data.py), which no task shows and which have masks:\n"
    )
    views = run["unseen_views"]
    if views:
        meths = [k for k in next(iter(views.values())) if k != "n"]
        L.append("| unseen view (slices) | " + " | ".join(meths) + " |")
        L.append("|---|" + "---|" * len(meths))
        for v, row in views.items():
            L.append(
                f"| {v} ({row['n']}) | " + " | ".join(f"{row[m][0]:.1f}" for m in meths) + " |"
            )
    return L


def _costs(run: dict) -> list[str]:
    L = ["\n### Tuning, parameters, time\n"]
    for kind in run["weights"]:
        w = run["weights"][kind]
        vals = "; ".join(
            f"{k}: Avg {v['Avg-IoU']:.2f}, Last {v['Last-IoU']:.2f}, FF {v['FF-IoU']:.2f}"
            for k, v in w["val"].items()
        )
        name = {"ewc": "EWC", "lwf": "LwF"}.get(kind, kind)
        L.append(f"- {name} weight on validation slices ({w['order'][0]} first): {vals}.")
    secs = run["train_seconds"]
    groups = {}
    for k, v in secs.items():
        if not k.startswith("tune"):
            groups.setdefault(k.split(":")[0].split("-")[0], []).append(v)
    L.append(
        "- Training seconds (under the load above; sum over tasks, both orders for EWC/LwF): "
        + ", ".join(f"{g} {sum(v):.0f} s ({len(v)} trainings)" for g, v in groups.items())
        + "."
    )
    t = run.get("timing")
    if t:
        m = t["machine"]
        L.append(
            f"- **Quiet figures of record** (`baselines.py --timing-only`, {m['date'][:16]} UTC, "
            f"{m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m_at_start']} at the "
            f"start and {m['load_avg_1m_at_end']} at the end; untrained models of each kind: a "
            "pass costs the same whatever the weights; EWC/LwF = CA-SAM):"
        )
        L.append(
            "  decode ms per box (module + prompt encoder + decoder, median): "
            + ", ".join(f"{k} {v:.1f}" for k, v in t["decode_ms"].items())
            + "; training ms per step (batch of the schedule: forward, loss, backward, Adam): "
            + ", ".join(f"{k} {v:.0f}" for k, v in t["train_step_ms"].items())
            + ".\n"
        )
        return L
    if not run["decode_ms"]:
        return L
    L.append(
        "- Decode ms per box (one box, module + prompt encoder + decoder; EWC/LwF = CA-SAM): "
        + ", ".join(f"{k} {v:.1f}" for k, v in run["decode_ms"].items())
        + ". Taken under load: the figure of record is "
        "`python benchmarks/baselines.py --timing-only` on a quiet machine.\n"
    )
    return L


def render(run: dict) -> str:
    notes = [f"> {n}\n" for n in run.get("notes", [])]
    parts = (
        _header(run)
        + _sequential_run(run)
        + notes
        + _order_tables(run)
        + _single_and_ood(run)
        + _costs(run)
    )
    return "\n".join(parts) + "\n"
