"""Embedding the slices around the one in view in the background, so the next box is instant.

While the user looks at slice k, the slices k, k+1, k-1, k+2, k-2 (``WINDOW`` each side, along
the last leading axis: the one napari's slider steps) are embedded one per background job of
the dock's :class:`~napari_casam._jobs.JobQueue`: a job the user asked for (a box, routing,
prepare volume) always runs before the next prefetch job, so a box waits at most for the one
slice being embedded. Moving to another slice re-targets the plan (queued prefetch jobs are
dropped, the running one finishes); changing image, Cancel or closing the dock cancels it. Nothing
here imports Qt.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from napari_casam._jobs import Job, JobQueue
from napari_casam._layers import Index

#: Slices embedded on each side of the one in view (0 turns prefetching off).
WINDOW = 2

KEY = "prefetch"

log = logging.getLogger(__name__)


def neighbours(index: Index, leading: Sequence[int], window: int = WINDOW) -> list[Index]:
    """``index`` then its neighbours along the last leading axis, nearest first, the next
    slice before the previous one; only indices inside ``leading`` (the leading axes' sizes)."""
    if not index or window <= 0:
        return []
    axis = len(index) - 1
    out = [tuple(index)]
    for d in range(1, window + 1):
        for step in (d, -d):
            k = index[axis] + step
            if 0 <= k < leading[axis]:
                out.append((*index[:axis], k))
    return out


class Prefetch:
    """The prefetch plan of one dock: which slices are left to embed, one job at a time.

    ``session.job_prefetch(get_plane, index)`` embeds one plane (returns True when the encoder
    ran, False when it was cached already or no model is loaded).
    """

    def __init__(self, session: Any, jobs: JobQueue, window: int = WINDOW) -> None:
        self.session = session
        self.jobs = jobs
        self.window = window
        self.target: tuple[str, Index] | None = None
        self.embedded: list[Index] = []
        """Planes the encoder ran on for prefetching (most recent last)."""
        self._todo: deque[Index] = deque()
        self._get: Callable[[Index], Any] | None = None
        self._generation = 0

    @property
    def busy(self) -> bool:
        """True while prefetch jobs run or wait."""
        return self.jobs.background_busy or bool(self._todo)

    def retarget(
        self, token: str, get_plane: Callable[[Index], Any], index: Index, leading: Sequence[int]
    ) -> None:
        """The user looks at plane ``index`` of image ``token``: embed around it from now on."""
        if (token, tuple(index)) == self.target and (self._todo or self.jobs.background_busy):
            return
        self.cancel()
        plan = neighbours(tuple(index), leading, self.window)
        if not plan or self.jobs.synchronous:
            return
        self.target = (token, tuple(index))
        self._get = get_plane
        self._todo.extend(plan)
        self._submit_next()

    def cancel(self) -> None:
        """Forget the plan: queued prefetch jobs are dropped, the running one finishes."""
        self._generation += 1
        self._todo.clear()
        self.target = None
        self.jobs.drop(KEY)

    def _submit_next(self) -> None:
        if not self._todo or self._get is None:
            return
        index = self._todo.popleft()
        gen = self._generation
        self.jobs.submit(
            Job(
                self.session.job_prefetch,
                (self._get, index),
                key=KEY,
                returned=partial(self._embedded, gen, index),
                errored=partial(self._failed, gen),
                finished=partial(self._finished, gen),
            ),
            background=True,
        )

    def _embedded(self, gen: int, index: Index, computed: bool) -> None:
        if computed:
            self.embedded.append(index)

    def _failed(self, gen: int, exc: BaseException) -> None:
        """A background embedding that fails stops the plan quietly: the user's own box
        on that slice will say what is wrong."""
        log.debug("napari-casam: prefetching stopped", exc_info=exc)
        if gen == self._generation:
            self._todo.clear()

    def _finished(self, gen: int) -> None:
        if gen == self._generation:
            self._submit_next()
