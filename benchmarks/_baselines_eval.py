"""Evaluation of the baselines (``baselines.py``): routed and sequential methods over the stages of
each order, single-task IoU, routing and OOD, parameters and decode time.

One scoring function for every method: ``_common.layer_scores`` (ground-truth box, IoU and
Boundary IoU in the image's own pixels) with the method's module applied to the embedding and
decoding through the method's own mask decoder (``_baselines_models.decoder_of``: the adapted
view of the decoder adapters, or the tuned copy; the shared backbone is never changed).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from _baselines_models import decoder_of, trainable_parameters
from _common import box_of, layer_scores, median_ms
from quality import cl_metrics

#: Routed methods: (kind of per-task model, hard routing?)
ROUTED = {
    "CA-SAM": ("casam", False),
    "CA-SAM, hard routing": ("casam", True),
    "decoder adapter": ("adapter", False),
    "decoder adapter, hard routing": ("adapter", True),
    "decoder tuning": ("decoder", False),
}
SEQUENTIAL = {"EWC": "ewc", "LwF": "lwf"}
METHODS = ["plain SAM", *ROUTED, *SEQUENTIAL]


class Evaluator:
    """Memoised (IoU, BIoU) of an image under a model, and the VAEs' scores of an image."""

    def __init__(self, su, models: dict, part: str = "all"):
        self.su, self.models = su, models
        self.vae: dict = {}
        self._thr: dict | None = None
        self.path = su.work / f"scores-{part}.json"
        self.memo: dict = {}
        for f in sorted(su.work.glob("scores-*.json")):  # every part's scores so far
            self.memo.update(json.loads(f.read_text()))
        self.new = 0

    def score(self, pid, pair, key: str | None) -> tuple[float, float]:
        k = json.dumps([list(pid), key])
        if k not in self.memo:
            model = self.models[key] if key is not None else None
            dec = decoder_of(model, self.su.bb)
            with torch.no_grad():
                self.memo[k] = list(layer_scores(self.su.p, model, [pair], dec)[0])
            self.new += 1
            if self.new % 20 == 0:
                self.save()
        return tuple(self.memo[k])

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.memo))
        tmp.replace(self.path)

    @property
    def thr(self) -> dict[str, float]:
        """CA-SAM's routing thresholds (read when first needed: a part may start before the
        tasks are learned)."""
        if self._thr is None:
            self.su.p.reload_library()
            self._thr = {n: self.su.p.task_infos[n].threshold for n in self.su.names}
        return self._thr

    def route(self, pid, image, known: list[str], hard: bool) -> str | None:
        """The task among ``known`` an image goes to (None: SAM fallback)."""
        from casam.routing import decide

        if pid not in self.vae:
            self.vae[pid] = self.su.p.route_embedding(self.su.p.embed(image)).scores
        sc = self.vae[pid]
        if hard:
            return min(known, key=sc.__getitem__)
        return decide(known, [sc[n] for n in known], [self.thr[n] for n in known]).task

    def routed_key(self, method: str, pid, image, known) -> str | None:
        kind, hard = ROUTED[method]
        task = self.route(pid, image, known, hard)
        return None if task is None else f"{kind}:{task}"


def _mean(vals) -> tuple[float, float]:
    a = np.asarray(vals, dtype=float)
    return float(a[:, 0].mean()), float(a[:, 1].mean())


def _key(ev, method, oname, j, pid, image, known):
    if method == "plain SAM":
        return None
    if method in SEQUENTIAL:
        return f"{SEQUENTIAL[method]}:{oname}:{j}"
    return ev.routed_key(method, pid, image, known)


def methods_of(models: dict) -> list[str]:
    """The methods whose models were trained (EWC/LwF may be skipped)."""
    return [m for m in METHODS if m not in SEQUENTIAL or f"{SEQUENTIAL[m]}:" in "".join(models)]


def order_table(su, ev: Evaluator, oname: str, order: list[str], methods=None) -> dict:
    """Last-/Avg-/FF-IoU and BIoU of ``methods`` (default: every trained one) over ``order``."""
    N = len(order)
    METHODS = methods or methods_of(ev.models)  # noqa: N806
    R = {m: ({}, {}) for m in METHODS}
    for j in range(N):
        known = order[: j + 1]
        for k in range(j + 1):
            n = order[k]
            for m in METHODS:
                vals = [
                    ev.score(
                        ("test", n, i), pr, _key(ev, m, oname, j, ("test", n, i), pr[0], known)
                    )
                    for i, pr in enumerate(su.test[n])
                ]
                R[m][0][(k, j)], R[m][1][(k, j)] = _mean(vals)
    sizes = [len(su.test[n]) for n in order]
    table = {}
    for m in METHODS:
        mi, mb = cl_metrics(R[m][0], sizes), cl_metrics(R[m][1], sizes)
        table[m] = {
            **{f"{a}-IoU": v for a, v in mi.items()},
            **{f"{a}-BIoU": v for a, v in mb.items()},
        }
    last = {
        m: {order[k]: [R[m][0][(k, N - 1)] * 100, R[m][1][(k, N - 1)] * 100] for k in range(N)}
        for m in METHODS
    }
    return {"name": oname, "order": order, "table": table, "per_task_last": last}


def own_models(n: str) -> list[tuple[str, str | None]]:
    """(label, model key) of plain SAM and each per-task kind, for task ``n``."""
    kinds = (("CA-SAM", "casam"), ("decoder adapter", "adapter"), ("decoder tuning", "decoder"))
    return [("plain SAM", None)] + [(label, f"{k}:{n}") for label, k in kinds]


def single_task(su, ev: Evaluator) -> dict:
    """Each task's own model on its test split (no routing): IoU, BIoU in points."""
    out = {}
    for n in su.names:
        row = {}
        for label, key in own_models(n):
            iou, biou = _mean(
                [ev.score(("test", n, i), pr, key) for i, pr in enumerate(su.test[n])]
            )
            row[label] = [iou * 100, biou * 100]
        out[n] = row
    return out


def routing_tables(su, ev: Evaluator) -> dict:
    """All tasks learned: where known test images, OOD images and masked unseen views go."""
    names = su.names
    out = {}
    for hard in (False, True):
        label = "hard" if hard else "threshold + fallback"
        known = [
            (n, ev.route(("test", n, i), pr[0], names, hard))
            for n in names
            for i, pr in enumerate(su.test[n])
        ]
        ood = [ev.route(("ood", i), img, names, hard) for i, (_, img) in enumerate(su.ood)]
        masked = [
            ev.route(("view", v, i), pr[0], names, hard)
            for v, prs in su.ood_masked.items()
            for i, pr in enumerate(prs)
        ]
        out[label] = {
            "own": float(np.mean([r == n for n, r in known])),
            "fallback": float(np.mean([r is None for _, r in known])),
            "wrong": float(np.mean([r is not None and r != n for n, r in known])),
            "ood_to_sam": float(np.mean([r is None for r in ood])) if ood else None,
            "ood_tasks": {t: sum(r == t for r in ood) for t in names if any(r == t for r in ood)},
            "views_to_sam": float(np.mean([r is None for r in masked])) if masked else None,
        }
    return out


def unseen_view_iou(su, ev: Evaluator) -> dict:
    """IoU, BIoU (points) on the masked unseen CT views, per view and routed method."""
    out = {}
    for v, prs in su.ood_masked.items():
        row = {"n": len(prs)}
        for m in ("plain SAM", *ROUTED):
            keys = [
                None if m == "plain SAM" else ev.routed_key(m, ("view", v, i), pr[0], su.names)
                for i, pr in enumerate(prs)
            ]
            iou, biou = _mean(
                [
                    ev.score(("view", v, i), pr, k)
                    for i, (pr, k) in enumerate(zip(prs, keys, strict=True))
                ]
            )
            row[m] = [iou * 100, biou * 100]
        out[v] = row
    return out


def parameters(su, models) -> dict:
    n = su.names[0]
    return {
        "Alignment Layer (CA-SAM, EWC, LwF)": trainable_parameters(models[f"casam:{n}"]),
        "decoder adapter": trainable_parameters(models[f"adapter:{n}"]),
        "decoder tuning": trainable_parameters(models[f"decoder:{n}"]),
        "whole backbone": sum(p.numel() for p in su.bb.image_encoder.parameters())
        + trainable_parameters(su.bb.prompt_encoder)
        + trainable_parameters(su.bb.mask_decoder),
    }


@torch.no_grad()
def decode_ms(su, models: dict, repeats: int) -> dict:
    """Median ms of one box's decode (module + prompt encoder + decoder), per kind of model.
    EWC and LwF apply one Alignment Layer: the same cost as CA-SAM's. As in the product, plain
    SAM and the Alignment Layer decode through the compiled box decoder where the encoder runs
    in OpenVINO, the decoder adapters and the tuned decoder in torch."""
    n = su.names[0]
    img, m = su.test[n][0]
    e = su.p.embed(img)
    z = e.z[None].to(su.bb.device)
    bt = torch.from_numpy(e.geometry.boxes_to_input(box_of(np.asarray(m) > 0))).to(su.bb.device)
    out = {}
    for label, key in own_models(n):
        model = models[key] if key else None
        dec = decoder_of(model, su.bb)
        out[label] = round(
            median_ms(
                lambda model=model, dec=dec: su.bb.decode(
                    model(z) if model is not None else z, bt, decoder=dec
                ),
                repeats,
            ),
            2,
        )
    return out


def method_tables(su, ev: Evaluator, orders, models, weights) -> dict:
    return {
        "tasks": {n: {"train": len(su.train[n]), "test": len(su.test[n])} for n in su.names},
        "orders": [order_table(su, ev, oname, order) for oname, order in orders],
        "single_task": single_task(su, ev),
        "routing": routing_tables(su, ev),
        "unseen_views": unseen_view_iou(su, ev),
        "parameters": parameters(su, models),
        "weights": weights,
        "ood_images": len(su.ood),
    }
