"""The Qt-free model of the dock: image binding, boxes -> labels, undo, volumes, routing.

Views (``napari_casam._qt``) read it and bind its events; it never imports Qt. The layers
are reached through a :class:`Layers` object (the viewer in the plugin, plain napari layers
in tests), the engine through a ``Session`` (a fake one in tests), jobs through a
:class:`~napari_casam._jobs.JobQueue`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_casam import _texts
from napari_casam._jobs import Job, JobQueue
from napari_casam._layers import (
    Index,
    interpolate_boxes,
    n_leading,
    plane,
    plane_indices,
    rectangle_to_box,
    spatial_shape,
)
from napari_casam._model import boxes as B
from napari_casam._model import labels as L
from napari_casam._model.feedback import JobFeedback
from napari_casam._model.layers import Layers
from napari_casam._model.prefetch import Prefetch
from napari_casam._model.quality import low_confidence
from napari_casam._model.routing import RouteState
from napari_casam._notify import notify

if TYPE_CHECKING:
    from napari_casam._session import Routed, Segmented, Session


#: Undo compares the masks before and after (to find the slice it changed) up to this size.
UNDO_DIFF_BYTES = 256 << 20


log = logging.getLogger(__name__)


class DockModel(JobFeedback):
    """State and actions of one dock; emits events the views show."""

    route_changed = Signal(object, str)
    """(RouteText, where) for the routing card."""
    status_changed = Signal(str)
    job_changed = Signal(str, int, int)
    """(text, done, total) of the running job; total 0 = busy without a count."""
    cancellable = Signal(bool)

    def __init__(self, session: Session, layers: Layers, jobs: JobQueue | None = None) -> None:
        self.session = session
        self.layers = layers
        self.jobs = jobs or JobQueue()
        self.token: str | None = None
        self.route = RouteState()
        self.override = _texts.AUTO
        self.auto_route = True
        self.status = ""
        self.last_segmentation: Segmented | None = None
        self.last_timing: dict[str, float] = {}
        self.notify: Callable[[str, str], None] = notify
        self._cancel = threading.Event()
        self.prefetch = Prefetch(session, self.jobs)

    # ---- binding ----------------------------------------------------------------------------
    @property
    def image(self) -> Any:
        return self.layers.image(self.token)

    def bind(self, image: Any) -> None:
        """Work on ``image`` from now on; its routing is not known yet."""
        self.token = self.layers.token(image) if image is not None else None
        self.prefetch.cancel()
        self._set_route(RouteState(self.token))

    def current_index(self, image: Any = None) -> Index:
        image = image if image is not None else self.image
        return self.layers.current_index(image) if image is not None else ()

    # ---- routing ----------------------------------------------------------------------------
    def _set_route(self, state: RouteState) -> None:
        self.route = state
        self.show_route()

    def show_route(self) -> None:
        image = self.image
        index = self.current_index(image)
        text = self.route.text(self.override, self.auto_route)
        if image is not None and image.multiscale:
            text = _texts.describe_route(None)
            where = f"{image.name}: multiscale images are not supported"
        else:
            where = self.where(image, index)
        self.route_changed.emit(text, where)

    def where(self, image: Any, index: Index) -> str:
        if image is None:
            return ""
        return _texts.where_text(image.name, index, spatial_shape(image.data.shape, image.rgb)[0])

    def set_override(self, value: str) -> None:
        self.override = value
        self.show_route()

    def forget_route(self) -> None:
        self._set_route(RouteState(self.token))

    def update_route(self, model_ready: bool = True) -> None:
        """Route the plane in view (embedding it first when auto-routing is on)."""
        image = self.image
        if (
            image is None
            or image.multiscale
            or (self.session.predictor is None and not model_ready)
        ):
            self.show_route()
            return
        index = self.current_index(image)
        self.jobs.submit(
            Job(
                self.session.job_route,
                (plane(image.data, index), index, self.auto_route),
                key="route",
                yielded=self.on_job_text,
                returned=partial(self._on_routed, self.token),
                errored=self._on_route_error,
            ),
            replace=True,
        )
        shape = spatial_shape(image.data.shape, image.rgb)
        self.prefetch.retarget(self.token, partial(plane, image.data), index, shape[:-2])

    def _on_routed(self, tok: str, result: Routed) -> None:
        if tok != self.token or result.index != self.current_index():
            return
        if result.route is not None or self.route.decision is None:
            self._set_route(RouteState(tok, result.index, result.route))

    def _on_route_error(self, exc: BaseException) -> None:
        """Routing runs on its own as the user scrolls: problems go on the card, quietly."""
        from casam.errors import CasamError

        if not isinstance(exc, CasamError):
            log.error("napari-casam: routing failed", exc_info=exc)
        self._set_route(RouteState(self.token, self.current_index(), None, str(exc)))

    # ---- segmentation -----------------------------------------------------------------------
    def segment_new_boxes(self, prompts: Any, image: Any) -> int:
        """Segment every box of ``prompts`` not segmented yet; returns how many were queued."""
        if image is None or image.multiscale:
            return 0
        t0 = time.perf_counter()
        feats = prompts.features
        shape = spatial_shape(image.data.shape, image.rgb)
        new = B.group_new_boxes(feats["box_id"].to_numpy(), prompts.shape_type, prompts.data, shape)
        for row, bid in new.ids.items():
            feats.loc[row, "box_id"] = bid
        for row in new.rejected:
            feats.loc[row, "label"] = -1
        if new.rejected:
            self.notify(
                "info", f"{len(new.rejected)} shape(s) ignored: draw rectangles inside the image."
            )
        tok = self.layers.token(image)
        for group in new.planes:
            self.jobs.submit(
                Job(
                    self.session.job_segment,
                    (
                        plane(image.data, group.index),
                        group.index,
                        np.stack(group.boxes),
                        self.override,
                        group.ids,
                    ),
                    key="segment",
                    yielded=self.on_job_text,
                    returned=partial(self._on_segmented, tok, t0),
                    errored=self.on_job_error,
                )
            )
        return sum(len(g.ids) for g in new.planes)

    def _on_segmented(self, tok: str, t0: float, res: Segmented) -> None:
        image = self.layers.image(tok)
        prompts = self.layers.prompts(image) if image is not None else None
        if prompts is None:
            return
        masks = self.layers.ensure_masks(image)
        values, replaced = L.write_masks(masks, res.index, res.masks)
        L.set_box_labels(prompts, res.tags, values)
        written = [v for v in values if v]
        if written:
            masks.selected_label = written[-1]
        dt = time.perf_counter() - t0
        self.last_segmentation = res
        self.last_timing = {"box_to_mask": dt, "model": res.seconds, "embed": res.embed_seconds}
        low = low_confidence(res)
        self.set_status(
            _texts.segmented_text(
                len(written) - len(replaced),
                res.task or "plain SAM",
                dt,
                res.embed_seconds,
                len(values) - len(written),
                len(low),
                len(replaced),
            )
        )
        if low:
            self.notify("warning", _texts.low_confidence_text(len(low)))
        if tok == self.token and res.index == self.current_index(image):
            forced = res.route is not None and getattr(res.route, "forced", False)
            decision = res.image_route if forced or res.route is None else res.route
            self._set_route(RouteState(tok, res.index, decision or self.route.decision))

    def undo(self) -> bool:
        """Undo the last edit of the masks layer; boxes whose mask it removed go too.

        When the edit was on another slice than the one in view, the view moves there and
        the status says so (an undo never changes what the user cannot see).
        """
        image = self.image
        masks = self.layers.masks(image) if image is not None else None
        if masks is None:
            return False
        small = masks.data.nbytes <= UNDO_DIFF_BYTES
        before = np.array(masks.data, copy=True) if small else None
        L.undo_with_boxes(masks, self.layers.prompts(image))
        if before is None:
            return True
        n_lead = n_leading(image.data.shape, image.rgb)
        planes = L.changed_planes(before, masks.data, n_lead)
        if planes and n_lead > 0 and self.current_index(image) not in planes:
            self.layers.show_plane(image, planes[0])
            self.set_status(
                f"Undid an edit on {self.where(image, planes[0]).split(' · ')[-1]}: "
                "the view moved there."
            )
        return True

    def redo(self) -> None:
        image = self.image
        masks = self.layers.masks(image) if image is not None else None
        if masks is not None:
            masks.redo()

    # ---- volumes ----------------------------------------------------------------------------
    def prepare_volume(self) -> bool:
        """Embed every plane of the image in the background."""
        image = self.image
        if image is None or n_leading(image.data.shape, image.rgb) <= 0:
            self.notify("info", "Prepare volume is for 3-D images; this image has a single plane.")
            return False
        indices = plane_indices(spatial_shape(image.data.shape, image.rgb)[:-2])
        t0 = time.perf_counter()

        def done(n: int) -> None:
            self.set_status(
                f"Volume prepared: {n} slices embedded in {time.perf_counter() - t0:.0f} s; "
                "boxes now answer at once."
            )

        self._per_slice(
            self.session.job_prepare,
            (partial(plane, image.data), indices),
            "prepare",
            "Embedding slice",
            done,
        )
        return True

    def _per_slice(self, fn: Any, args: tuple, key: str, counting: str, returned: Any) -> None:
        """Run a job that works slice by slice: the job text counts slices, cancel stops it."""
        self._cancel = threading.Event()
        self.cancellable.emit(True)
        self.jobs.submit(
            Job(
                fn,
                (*args, self._cancel),
                key=key,
                yielded=partial(self.on_count, counting),
                returned=returned,
                errored=self.on_job_error,
            )
        )

    def interpolation_rows(self, prompts: Any) -> tuple[int, int] | None:
        feats = prompts.features
        indices = [rectangle_to_box(v)[0] for v in prompts.data]
        return B.interpolation_pair(
            sorted(prompts.selected_data),
            feats["label"].to_numpy(),
            feats["box_id"].to_numpy(),
            indices,
        )

    def interpolate(self) -> bool:
        """Segment the planes between two boxes of one structure, as one undoable step."""
        image = self.image
        prompts = self.layers.prompts(image) if image is not None else None
        if prompts is None or n_leading(image.data.shape, image.rgb) <= 0:
            self.notify("info", "Interpolation needs a 3-D image with boxes on two slices.")
            return False
        pair = self.interpolation_rows(prompts)
        if pair is None:
            self.notify("info", "Draw a box around the structure on two different slices first.")
            return False
        shape = spatial_shape(image.data.shape, image.rgb)
        (ia, ba), (ib, bb) = (rectangle_to_box(prompts.data[r], shape[-2:]) for r in pair)
        if ba is None or bb is None:
            return False
        try:
            items = interpolate_boxes(ia, ba, ib, bb)
        except ValueError as exc:
            self.notify("warning", str(exc))
            return False
        if not items:
            self.notify(
                "info", "The two boxes are on neighbouring slices: nothing lies between them."
            )
            return False
        label_a, label_b = (int(prompts.features["label"].iloc[r]) for r in pair)
        done = partial(
            self._on_interpolated, self.token, (ib, label_b), label_a, time.perf_counter()
        )
        self._per_slice(
            self.session.job_interpolate,
            (partial(plane, image.data), items, self.override),
            "interpolate",
            "Interpolating slice",
            done,
        )
        return True

    def _on_interpolated(
        self, tok: str, end: tuple[Index, int], label_a: int, t0: float, result: list
    ) -> None:
        image = self.layers.image(tok)
        masks = self.layers.masks(image) if image is not None else None
        if masks is None:
            return
        value = L.write_interpolation(masks, result, label_a, end)
        masks.selected_label = value
        self.set_status(
            f"Interpolated {len(result)} slices as label {value} in "
            f"{time.perf_counter() - t0:.1f} s (one undo step)."
        )

    def cancel_jobs(self) -> None:
        """Stop preparing or interpolating (at the next slice), and prefetching."""
        self._cancel.set()
        self.prefetch.cancel()
        self.cancellable.emit(False)

    def close(self) -> None:
        """Stop every job and tell the views nothing more (they are going away)."""
        self._cancel.set()
        self.prefetch.cancel()
        self.jobs.close()
        for signal in (self.route_changed, self.status_changed, self.job_changed, self.cancellable):
            signal.disconnect()
