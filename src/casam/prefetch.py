"""Embedding the slices ahead of a propagation front in one background thread."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


class Prefetcher:
    """Embeds the slices ahead of the propagation front in one background thread."""

    def __init__(self, predictor, volume: np.ndarray, ahead: int):
        self.predictor, self.volume, self.ahead = predictor, volume, ahead
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="casam-prefetch") if ahead else None
        self._futures: dict[int, Future] = {}

    def schedule(self, index: int, direction: int) -> None:
        """Queue ``index + direction``, ... (``ahead`` slices); drop queued slices elsewhere."""
        if self._pool is None:
            return
        want = [index + direction * t for t in range(1, self.ahead + 1)]
        want = [j for j in want if 0 <= j < len(self.volume)]
        for j in [j for j in self._futures if j not in want and j != index]:
            self._futures.pop(j).cancel()
        for j in want:
            if j not in self._futures and not self.predictor.is_cached(self.volume[j]):
                self._futures[j] = self._pool.submit(self.predictor.embed, self.volume[j])

    def get(self, index: int):
        f = self._futures.pop(index, None)
        if f is not None and not f.cancelled():
            return f.result()
        return self.predictor.embed(self.volume[index])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
