"""The Python API: set an image once, then ask for masks from boxes.

>>> p = Predictor(library="~/casam-library")            # LiteMedSAM, bundled
>>> route = p.set_image(ct_slice)                         # embeds (cached) and routes
>>> pred = p.predict([[40, 60, 120, 150]])                 # XYXY, original-image pixels
>>> pred.masks.shape, pred.scores, pred.task              # (1, H, W) bool, SAM's IoU, task used
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from casam.config import LearnSettings
from casam.embeddings import Embedding, EmbeddingCache, image_key
from casam.errors import InputError
from casam.library import TaskInfo, TaskLibrary
from casam.neighbours import NeighbourBank, task_floor, task_k
from casam.preprocess import check_boxes, check_image
from casam.router import VAEBank, attention_pool
from casam.routing import DEFAULT_ROUTER, ROUTERS, RouteDecision, check_known, choose
from casam.sam import Backbone, get_backbone
from casam.task_adapter import TaskAdapter, adapter_of
from casam.task_tensors import beta_of, stored_views, vae_from_state


@dataclass(frozen=True)
class Prediction:
    """Masks for N boxes of one image."""

    masks: np.ndarray
    """(N, H, W) bool, in original-image pixels."""
    scores: np.ndarray
    """(N,) SAM's predicted IoU of each mask."""
    route: RouteDecision
    task: str | None
    """The task whose adapter (Alignment Layer or decoder adapters) was used; None = plain SAM."""
    logits: np.ndarray | None = None
    """(N, 256, 256) float32 low-res logits: feed one back as ``mask_input`` to refine it."""


class Predictor:
    """A frozen backbone, an embedding cache and the tasks of a library.

    ``library``: a TaskLibrary, a folder, None for the per-user default library, or False for
    none (plain SAM only). Only tasks made with this backbone (same weights digest) route.
    ``router``: ``"knn"`` (default: nearest stored views, ``casam.neighbours``) or ``"paper"``
    (the paper's VAE rule, ``casam.router.VAEBank``); see ``casam.routing``.
    """

    def __init__(
        self,
        backbone: str | Backbone = "litemedsam",
        checkpoint: str | Path | None = None,
        device: str = "auto",
        library: TaskLibrary | str | Path | None | bool = None,
        cache_bytes: int = 1 << 30,
        disk_cache: str | Path | None = None,
        temperature: float = 1.0,
        router: str = DEFAULT_ROUTER,
    ):
        if router not in ROUTERS:
            raise InputError(
                f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}", subject="router"
            )
        self.router = router
        self.backbone = (
            backbone
            if isinstance(backbone, Backbone)
            else get_backbone(backbone, checkpoint, device)
        )
        if library is False:
            self.library: TaskLibrary | None = None
        elif isinstance(library, TaskLibrary):
            self.library = library
        else:
            self.library = TaskLibrary(library)
        self.cache = EmbeddingCache(cache_bytes, disk_cache)
        self.temperature = temperature
        self._lock = threading.RLock()
        self._aligned: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._adapters: dict[str, TaskAdapter] = {}
        self._image: np.ndarray | None = None
        self._embedding: Embedding | None = None
        self._route: RouteDecision | None = None
        self.task_infos: dict[str, TaskInfo] = {}
        self.problems: list[str] = []
        self.bank = VAEBank([], [], [], [])
        self.neighbours = NeighbourBank([], [], [])
        self.reload_library()

    # ---- tasks -----------------------------------------------------------------------------
    def reload_library(self) -> None:
        """Re-read the library (after a task was learned, removed, renamed or imported)."""
        from casam.task_router import knn_threshold

        names, vaes, taus, betas, infos, problems = [], [], [], [], {}, []
        views, knn, ks, floors = [], [], [], []
        if self.library is not None:
            for item in self.library.scan(self.backbone.identity):  # each task read once
                if isinstance(item, str):
                    problems.append(item)
                    continue
                info = item.info
                try:
                    vae = vae_from_state(item.router)
                except (KeyError, RuntimeError) as e:
                    problems.append(f"task '{info.name}' skipped: {e}")
                    continue
                names.append(info.name)
                vaes.append(vae)
                taus.append(info.threshold)
                betas.append(beta_of(info.settings))
                infos[info.name] = info
                views.append(stored_views(item.router))
                s = LearnSettings.from_dict(info.settings)  # format 1: no knn_threshold yet
                if info.knn_threshold is None:  # format 1: calibrated here, this release's k
                    knn.append(knn_threshold(views[-1], s))
                    ks.append(task_k(views[-1].shape[1], s.to_dict()))
                else:  # the k its stored threshold was calibrated with
                    knn.append(info.knn_threshold)
                    ks.append(task_k(views[-1].shape[1], info.settings))
                floors.append(task_floor(views[-1].shape[1], info.settings))
        with self._lock:
            self.bank = VAEBank(names, vaes, taus, betas)
            self.neighbours = NeighbourBank(
                names, views, knn, ks, [f for f, _ in floors], [s for _, s in floors]
            )
            self.task_infos = infos
            self.problems = problems
            self._adapters.clear()
            self._aligned.clear()
            if self._embedding is not None:
                self._route = self.route_embedding(self._embedding)

    @property
    def task_names(self) -> list[str]:
        return list(self.bank.names)

    def adapter(self, name: str) -> TaskAdapter:
        """A task's adapter, read from the library once (a decoder task's adapted decoder is
        built here, once: the shared backbone's decoder is never changed)."""
        with self._lock:
            if name not in self._adapters:
                check_known(name, self._thresholds(), self.backbone.identity)
                assert self.library is not None
                self._adapters[name] = adapter_of(self.library.load(name), self.backbone)
            return self._adapters[name]

    def layer(self, name: str) -> torch.nn.Module:
        """A task's adapter module: its Alignment Layer, or its DecoderAdapters."""
        return self.adapter(name).module

    def _thresholds(self) -> dict[str, float]:
        bank = self.neighbours if self.router == "knn" else self.bank
        return dict(zip(bank.names, bank.thresholds.tolist(), strict=True))

    # ---- embeddings ------------------------------------------------------------------------
    def embed(self, image: np.ndarray) -> Embedding:
        """The (cached) embedding of a 2-D image. Thread-safe: meant for background workers."""
        a = check_image(image)
        key = image_key(a, self.backbone.embed_identity)
        geo = self.backbone.geometry(*a.shape[:2])
        e = self.cache.get(key, geo, self.temperature)
        if e is None:
            z, geo = self.backbone.encode(a)
            key = image_key(a, self.backbone.embed_identity)  # the runtime may have fallen back
            e = Embedding(key, z, geo, attention_pool(z, self.temperature))
            self.cache.put(e)
        return e

    def iter_embed(self, images: Iterable[np.ndarray]) -> Iterator[tuple[int, Embedding]]:
        """(index, embedding) of each image, in order; uncached images are encoded in batches
        of the runtime's batch size (8 slices per call run faster per slice on a CPU).
        Closing the generator between two items stops before the next batch."""
        bb = self.backbone
        size = max(1, int(getattr(bb.runtime, "batch", 1) or 1))
        pending: list[tuple[int, np.ndarray, str]] = []
        for i, image in enumerate(images):
            a = check_image(image)
            key = image_key(a, bb.embed_identity)
            e = self.cache.get(key, bb.geometry(*a.shape[:2]), self.temperature)
            if e is not None and not pending:
                yield i, e
                continue
            pending.append((i, a, key if e is None else ""))
            if sum(1 for *_, k in pending if k) >= size:
                yield from self._encode_pending(pending)
                pending = []
        yield from self._encode_pending(pending)

    def _encode_pending(self, pending: list) -> Iterator[tuple[int, Embedding]]:
        bb = self.backbone
        todo = [(i, a) for i, a, key in pending if key]
        if todo:
            prepared = [bb.prepare(a) for _, a in todo]
            z = bb.encode_inputs(torch.cat([x for x, _ in prepared]))
            ident = bb.embed_identity
            for (_, a), (_, geo), zi in zip(todo, prepared, z, strict=True):
                e = Embedding(image_key(a, ident), zi, geo, attention_pool(zi, self.temperature))
                self.cache.put(e)
        for i, a, _ in pending:
            yield i, self.embed(a)

    def is_cached(self, image: np.ndarray) -> bool:
        return image_key(np.asarray(image), self.backbone.embed_identity) in self.cache

    # ---- routing and prediction --------------------------------------------------------------
    def route_embedding(self, e: Embedding) -> RouteDecision:
        if self.router == "paper":
            return self.bank.route(e.feature)
        return self.neighbours.route(e.views)

    def set_image(self, image: np.ndarray) -> RouteDecision:
        """Embed (or fetch from cache) and route an image; later ``predict`` calls use it."""
        e = self.embed(image)
        route = self.route_embedding(e)
        with self._lock:
            self._image, self._embedding, self._route = image, e, route
        return route

    @property
    def route(self) -> RouteDecision | None:
        return self._route

    @property
    def embedding(self) -> Embedding | None:
        return self._embedding

    def _aligned_z(self, e: Embedding, task: str | None) -> torch.Tensor:
        """The embedding the task's decoder sees (cached for a few Alignment Layer tasks)."""
        z = e.z[None].to(self.backbone.device)
        if task is None or self.adapter(task).kind != "alignment":
            return z
        key = (e.key, task)
        with self._lock:
            if key in self._aligned:
                self._aligned.move_to_end(key)
                return self._aligned[key]
        with torch.no_grad():
            za = self.adapter(task).embedding(z)
        with self._lock:
            self._aligned[key] = za
            while len(self._aligned) > 8:
                self._aligned.popitem(last=False)
        return za

    def resolve_task(
        self, e: Embedding, task: str | None = "auto"
    ) -> tuple[str | None, RouteDecision]:
        """``"auto"`` -> routed task; ``"sam"``/None -> plain SAM; a name -> that task."""
        r = choose(
            task, lambda: self.route_embedding(e), self._thresholds(), self.backbone.identity
        )
        return r.task, r

    def predict(
        self,
        boxes: np.ndarray | Sequence | None = None,
        task: str | None = "auto",
        image: np.ndarray | None = None,
        points: np.ndarray | Sequence | None = None,
        labels: np.ndarray | Sequence | None = None,
        mask_input: np.ndarray | None = None,
    ) -> Prediction:
        """Masks for XYXY boxes and/or XY points (original-image pixels) on the current image.

        ``points`` (P, 2) with ``labels`` (P,) 1 positive / 0 negative (default all positive)
        and ``mask_input`` (1, 256, 256), a previous ``Prediction.logits``, prompt ONE object
        (with at most one box); boxes alone give N objects.
        """
        if image is not None:
            self.set_image(image)
        if self._embedding is None:
            raise InputError("no image set: call set_image(image) before predict(boxes)")
        return self.predict_embedding(self._embedding, boxes, task, points, labels, mask_input)

    def predict_embedding(
        self,
        e: Embedding,
        boxes: np.ndarray | Sequence | None = None,
        task: str | None = "auto",
        points: np.ndarray | Sequence | None = None,
        labels: np.ndarray | Sequence | None = None,
        mask_input: np.ndarray | None = None,
    ) -> Prediction:
        """:meth:`predict` on an embedding. Points are clicks on one object, applied in order
        as local corrections of the box's (or ``mask_input``'s) mask (``casam.correct``)."""
        from casam.correct import apply_clicks

        b, p, lab, _ = _check_prompts(e, boxes, points, labels, mask_input)
        if not len(p):
            return self.sam_prompts(e, b, task, mask_input=mask_input)
        name, route = self.resolve_task(e, task)
        clicks = [(float(x), float(y), bool(v)) for (x, y), v in zip(p, lab, strict=True)]
        st = apply_clicks(self, e, b, clicks, name or "sam", mask_input)
        return Prediction(st.mask[None], np.array([st.score]), route, name, st.logits[None])

    def sam_prompts(
        self,
        e: Embedding,
        boxes: np.ndarray | Sequence | None = None,
        task: str | None = "auto",
        points: np.ndarray | Sequence | None = None,
        labels: np.ndarray | Sequence | None = None,
        mask_input: np.ndarray | None = None,
    ) -> Prediction:
        """SAM's own decoding of boxes, point prompts and previous logits, in one decoder call
        (points as SAM's point prompts; the product's clicks go through
        :meth:`predict_embedding`)."""
        from casam.prompts import points_to_input

        geo = e.geometry
        b, p, lab, m = _check_prompts(e, boxes, points, labels, mask_input)
        name, route = self.resolve_task(e, task)
        z = self._aligned_z(e, name)
        decoder = None if name is None else self.adapter(name).decoder
        with torch.no_grad():
            bt = None if b is None else torch.from_numpy(geo.boxes_to_input(b))
            pt = torch.from_numpy(points_to_input(geo, p))[None] if len(p) else None
            lt = torch.from_numpy(lab)[None] if len(p) else None
            multimask = b is None and m is None and len(p) == 1
            logits, iou = self.backbone.decode(z, bt, pt, lt, m, multimask, decoder=decoder)
            masks = self.backbone.upscale_masks(logits, geo) > 0
        return Prediction(
            masks.cpu().numpy(),
            iou[:, 0].float().cpu().numpy(),
            route,
            name,
            logits[:, 0].float().cpu().numpy(),
        )

    def propagate(self, volume: np.ndarray, slice_index: int, **kwargs):
        """Segment one structure through a (Z, H, W) volume from a prompt on one slice.

        See :func:`casam.propagate.propagate` for the arguments; returns a
        :class:`casam.propagate.Propagation` (3-D mask, per-slice routing and IoU estimates).
        """
        from casam.propagate import propagate

        return propagate(self, volume, slice_index, **kwargs)


def _check_prompts(e: Embedding, boxes, points, labels, mask_input) -> tuple:
    """Checked (boxes or None, points (P, 2), labels (P,), mask_input tensor or None)."""
    from casam.prompts import check_mask_input, check_points

    geo = e.geometry
    b = None if boxes is None else check_boxes(boxes, geo.height, geo.width)
    p, lab = check_points(points, labels, geo.height, geo.width)
    m = check_mask_input(mask_input)
    if b is None and len(p) == 0:
        raise InputError("give a box or at least one point to segment an object")
    if (len(p) or m is not None) and b is not None and len(b) > 1:
        raise InputError(f"points and mask_input prompt one object; got {len(b)} boxes")
    if b is None and m is None and not lab.any():
        raise InputError(
            "only negative points and no object yet: draw a box or add a positive point first"
        )
    return b, p, lab, m
