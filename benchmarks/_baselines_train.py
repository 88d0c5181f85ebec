"""Training of the baselines (``baselines.py``), each model saved in the work folder as soon as it
is trained, so an interrupted run resumes where it stopped.

Every model is trained by ``casam.training.train_alignment`` through ``_common.train_layer``:
the Alignment Layer's default schedule (epochs, batch, box jitter, cosine decay, bf16), only the
learning rate may differ (see ``LR``).
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _baselines_models import (
    DecoderAdapters,
    DecoderCopy,
    anchor_of,
    decoder_of,
    diag_fisher,
    ewc_hooks,
    lwf_hooks,
    merge_fisher,
)
from _common import Samples, train_layer

#: Learning rate per kind; None = the schedule's own (1e-3, the Alignment Layer's default).
#: The whole decoder starts from pre-trained weights: Adam at 1e-3 on them is the usual way to
#: wreck a pre-trained transformer, so decoder tuning uses 1e-4 (SAM / MedSAM fine-tuning's rate).
#: The adapters start at zero like the Alignment Layer's last conv: they take its rate.
LR = {"adapter": None, "decoder": 1e-4, "ewc": None, "lwf": None}
ADAPTER_BOTTLENECK = 32


def settings_with_lr(s, kind: str):
    from casam import LearnSettings

    lr = LR[kind]
    return s if lr is None else LearnSettings.from_dict({**s.to_dict(), "lr": lr})


class Seconds:
    """Training seconds per saved model, kept beside the models: one file per process
    (``seconds-PART.json``, so parallel parts do not overwrite each other), all read back."""

    def __init__(self, work: Path, part: str = "all"):
        self.path = work / f"seconds-{part}.json"
        self.data = {}
        for f in sorted(work.glob("seconds-*.json")):
            self.data.update(json.loads(f.read_text()))

    def put(self, key: str, seconds: float) -> None:
        self.data[key] = round(seconds, 1)
        self.path.write_text(json.dumps(self.data, indent=1))


def _save_module(module: torch.nn.Module, path: Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    state.update({f"extra.{k}": v.contiguous() for k, v in (extra or {}).items()})
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def _load_state(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    state = load_file(str(path))
    extra = {k[6:]: v for k, v in state.items() if k.startswith("extra.")}
    return {k: v for k, v in state.items() if not k.startswith("extra.")}, extra


def new_plug(kind: str, backbone) -> torch.nn.Module:
    if kind == "adapter":
        return DecoderAdapters.for_decoder(backbone.mask_decoder, ADAPTER_BOTTLENECK)
    if kind == "decoder":
        return DecoderCopy(backbone.mask_decoder)
    raise ValueError(kind)


def per_task_model(kind: str, backbone, name: str, samples: Samples, s, work: Path, secs):
    """The task's decoder adapters or tuned decoder (``kind``): loaded, else trained and saved."""
    path = work / f"{kind}-{name}.safetensors"
    plug = new_plug(kind, backbone)
    if path.is_file():
        plug.load_state_dict(_load_state(path)[0])
        return plug.eval().requires_grad_(False)
    t0 = time.perf_counter()
    dec = decoder_of(plug, backbone)
    plug = train_layer(backbone, samples, settings_with_lr(s, kind), layer=plug, decoder=dec)
    secs.put(f"{kind}:{name}", time.perf_counter() - t0)
    _save_module(plug, path)
    return plug


def _train_stage(kind, weight, backbone, layer, fisher, samples: Samples, s):
    """One task of the sequence: continue ``layer`` on ``samples`` with EWC's or LwF's term."""
    if layer is None or weight == 0:
        ctx = nullcontext()
    elif kind == "ewc":
        layer.requires_grad_(True)
        ctx = ewc_hooks(layer, fisher, anchor_of(layer), weight)
    else:
        teacher = copy.deepcopy(layer).eval().requires_grad_(False)
        ctx = lwf_hooks(layer, teacher, weight, float(layer.blocks[0].scale))
    with ctx:
        return train_layer(backbone, samples, settings_with_lr(s, kind), layer=layer)


def sequential_stages(kind, weight, su, order, samples_of, tag: str, first: Path):
    """EWC (``kind`` "ewc") or LwF ("lwf") with ``weight`` on ONE Alignment Layer trained on
    order[0], order[1], ...; yields the layer after each task. The first task has nothing to
    remember: its layer (saved at ``first``) is shared by EWC, LwF and every weight. EWC's
    Fisher is computed from each task's training samples at the end of that task, added to the
    previous ones (``<tag>-<j>-fisher``); then only the Fisher is kept."""
    layer, fisher = None, None
    for j, n in enumerate(order):
        path = first if j == 0 else su.work / f"{tag}-{j}.safetensors"
        if path.is_file():
            layer = load_layer_state(_load_state(path)[0])
        else:
            t0 = time.perf_counter()
            layer = _train_stage(kind, weight, su.bb, layer, fisher, samples_of(n), su.s)
            su.secs.put(f"{tag}:{j}" if j else f"first:{path.stem}", time.perf_counter() - t0)
            layer = layer.eval().requires_grad_(False)
            _save_module(layer, path)
        if kind == "ewc" and j < len(order) - 1:
            stem = f"{first.stem}-fisher" if j == 0 else f"{tag}-{j}-fisher"  # 0: shared
            fisher = _fisher_after(su, layer, fisher, samples_of(n), su.work / stem)
        yield layer


def _fisher_after(su, layer, fisher, smp: Samples, stem: Path) -> dict:
    """The accumulated Fisher after a task: loaded, else computed and saved."""
    path = stem.with_suffix(".safetensors")
    if path.is_file():
        return _load_state(path)[0]
    t0 = time.perf_counter()
    new = diag_fisher(su.bb, layer, smp.z, smp.boxes, smp.targets)
    out = merge_fisher(fisher, new)
    su.secs.put(f"fisher:{stem.name}", time.perf_counter() - t0)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return out


def load_layer_state(state: dict):
    from casam.task_tensors import layer_from_state

    return layer_from_state(state)


def timing_models(su) -> dict:
    """Untrained models of each per-task kind for the first task, keyed as trained ones are: the
    Alignment Layer (scale fixed from the task's embeddings, as ``learn_task`` does), decoder
    adapters and a decoder copy. A forward or backward pass costs the same whatever the weights."""
    from casam.task_adapter import new_adapter

    n = su.names[0]
    models = {f"casam:{n}": new_adapter(su.bb, su.s, su.samples[n].z).module.eval()}
    models.update({f"{k}:{n}": new_plug(k, su.bb).eval() for k in ("adapter", "decoder")})
    return models


def train_step_ms(su, models: dict, epochs: int = 2) -> dict:
    """Milliseconds per training step (one batch of the schedule: forward, loss, backward, Adam)
    of each kind in ``models`` (a copy of each is trained, so the timed models stay untouched), on
    the first task's training samples with the default schedule shortened to ``epochs``."""
    from casam import LearnSettings

    n = su.names[0]
    samples = su.samples[n]
    labels = {"casam": "CA-SAM", "adapter": "decoder adapter", "decoder": "decoder tuning"}
    steps = epochs * -(-len(samples) // su.s.batch_size)
    out = {}
    for kind, label in labels.items():
        layer = copy.deepcopy(models[f"{kind}:{n}"]).train()
        lr_kind = "ewc" if kind == "casam" else kind  # CA-SAM's rate: the schedule's own
        s = LearnSettings.from_dict({**settings_with_lr(su.s, lr_kind).to_dict(), "epochs": epochs})
        t0 = time.perf_counter()
        train_layer(su.bb, samples, s, layer=layer, decoder=decoder_of(layer, su.bb))
        out[label] = round(1000 * (time.perf_counter() - t0) / steps, 1)
    return out
