"""How long learning a task will take on this machine, measured before it starts.

Learning time varies about 5x between CPUs (an AMX Xeon against an AVX2-only EPYC) and with the
machine's load, so a table of figures cannot answer "how long will this take here". Instead a few
seconds of probes time the pieces on this machine, as they are, and the schedule multiplies them:

- the encoder: one real encode of the first training image (kept in the embedding cache, so it
  is not paid twice);
- an Alignment Layer step: forward, backward and Adam on a random batch of the schedule's size,
  after one untimed warm-up step (the first step allocates);
- the router: the K + 1 batched VAEs for a few steps on random features of the real size;
- the held-out evaluation: one layer pass and two decodes per held-out object.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from casam.config import LearnSettings
from casam.progress import duration

PROBE_VAE_STEPS = 30
#: A decoder-adapter training step's time as a share of an Alignment Layer step's (batch 6,
#: quiet: 307 against 748 ms, ``benchmarks/baselines.py --timing-only``, docs/benchmark-quality.md)
DECODER_STEP_SHARE = 0.41


@dataclass(frozen=True)
class LearnEstimate:
    """Seconds per piece; ``total`` is the sum."""

    embed_s: float
    n_embed: int
    step_s: float
    n_steps: int
    router_s: float
    evaluate_s: float
    maybe_s: float = 0.0
    """What a second adapter kind would add (``LearnSettings.adapter`` "auto", trained only when
    the Alignment Layer gains little on the held-out slices); not in ``total``."""

    @property
    def total(self) -> float:
        pieces = (self.step_s * self.n_steps, self.router_s, self.evaluate_s)
        return self.embed_s * self.n_embed + sum(pieces)

    def __str__(self) -> str:
        return (
            f"about {duration(self.total)} on this machine "
            f"(encoder {self.embed_s:.2g} s x {self.n_embed} images, "
            f"{self.n_steps} training steps x {self.step_s:.2g} s, "
            f"router {duration(self.router_s)}, evaluation {duration(self.evaluate_s)})"
            + (
                f"; {duration(self.maybe_s)} more if decoder adapters are tried too"
                if self.maybe_s
                else ""
            )
        )


def align_steps(n_samples: int, s: LearnSettings) -> int:
    """Optimiser steps of the Alignment Layer for ``n_samples`` training objects."""
    return math.ceil(n_samples / s.batch_size) * s.epochs


def estimate_learn(
    predictor,
    first_image: np.ndarray,
    n_images: int,
    n_train_samples: int,
    n_train_images: int,
    n_hold_samples: int,
    s: LearnSettings,
) -> LearnEstimate:
    """Time the pieces of learning on this machine (a few seconds) and scale by the schedule."""
    predictor.embed(first_image)  # cached: the embed stage does not pay for it again
    t = time.perf_counter()  # timed warm: a runtime's first call also loads or compiles it
    predictor.backbone.encode(first_image)
    embed_s = time.perf_counter() - t
    gen = torch.Generator().manual_seed(s.seed)
    step_s, decode_s = _layer_seconds(
        predictor.backbone, s, min(s.batch_size, n_train_samples), gen
    )
    n_steps, evaluate_s = align_steps(n_train_samples, s), decode_s * n_hold_samples
    second = s.adapter == "auto" and n_hold_samples > 0
    return LearnEstimate(
        embed_s=embed_s,
        n_embed=n_images,
        step_s=step_s,
        n_steps=n_steps,
        router_s=_router_seconds(max(n_train_images, s.folds), s, gen),
        evaluate_s=evaluate_s,
        maybe_s=DECODER_STEP_SHARE * step_s * n_steps + evaluate_s if second else 0.0,
    )


def _layer_seconds(backbone, s: LearnSettings, batch: int, gen: torch.Generator):
    """(one training step of a fresh layer at ``batch``, one held-out object's two decodes)."""
    from casam.task_adapter import new_adapter
    from casam.training import dice_bce, use_bf16

    dev, size, b = backbone.device, backbone.input_size, max(1, batch)
    z = (torch.randn((b, 256, 64, 64), generator=gen) * 0.1).to(dev)
    boxes = torch.tensor([[size * 0.25, size * 0.25, size * 0.75, size * 0.75]] * b).to(dev)
    target = torch.zeros((b, 256, 256), device=dev)
    adapter = new_adapter(backbone, s)  # of the kind to be trained
    cl = torch.channels_last  # as train_alignment runs it
    layer = adapter.module.to(memory_format=cl).train()
    z = z.contiguous(memory_format=cl)
    opt = torch.optim.Adam(layer.parameters(), lr=s.lr)
    bf16 = use_bf16(s, backbone)
    for _ in range(2):  # the first is a warm-up; the second is timed
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = adapter.decode(backbone, z, boxes)
        loss = dice_bce(logits[:, 0], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_s = time.perf_counter() - t
    layer.eval()
    t = time.perf_counter()
    with torch.no_grad():
        backbone.decode(z[:1], boxes[:1])
        adapter.decode(backbone, z[:1], boxes[:1])
    return step_s, time.perf_counter() - t


def _router_seconds(n: int, s: LearnSettings, gen: torch.Generator) -> float:
    """The router fit (K + 1 batched VAEs) on ``n`` features: a few steps timed, then scaled."""
    from casam.task_router import fit_task_router

    steps = min(PROBE_VAE_STEPS, s.vae_steps)
    feats = torch.randn((n, 256), generator=gen)
    t = time.perf_counter()
    fit_task_router(feats, dataclasses.replace(s, vae_steps=steps))
    return (time.perf_counter() - t) * s.vae_steps / steps
