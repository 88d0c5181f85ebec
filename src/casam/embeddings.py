"""Image embeddings, computed once per (image content, backbone identity) and cached.

The in-memory cache is an LRU bounded in bytes. An optional disk cache keeps embeddings across
sessions (float16 ``.npy`` files, read with ``allow_pickle=False``), e.g. for a whole volume.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from casam.backbones import EMBED_SHAPE
from casam.preprocess import Geometry

#: Bumped whenever preprocessing changes, so old cached embeddings are not reused.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class Embedding:
    """A frozen backbone's view of one image: (256, 64, 64) map, its geometry and router feature."""

    key: str
    z: torch.Tensor
    geometry: Geometry
    feature: torch.Tensor

    @functools.cached_property
    def views(self) -> torch.Tensor:
        """(3, 256) pooled views scored by the default router (``casam.neighbours``)."""
        from casam.neighbours import pooled_views

        return pooled_views(self.z, self.feature)

    @property
    def nbytes(self) -> int:
        return (
            self.z.element_size() * self.z.nelement()
            + self.feature.element_size() * self.feature.nelement()
        )


def image_key(image: np.ndarray, backbone_identity: str) -> str:
    """Content address of an image for one backbone: hash of pixels, shape, dtype and backbone."""
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{backbone_identity}|{PREPROCESS_VERSION}|{a.shape}|{a.dtype.str}|".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class EmbeddingCache:
    """Thread-safe LRU of embeddings within ``max_bytes``; optionally backed by a folder."""

    def __init__(self, max_bytes: int = 1 << 30, disk_dir: str | Path | None = None):
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir else None
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._items:
                return True
        return self._disk_path(key) is not None and self._disk_path(key).is_file()

    def _disk_path(self, key: str) -> Path | None:
        return self.disk_dir / f"{key}.npy" if self.disk_dir else None

    def get(self, key: str, geometry: Geometry, temperature: float) -> Embedding | None:
        with self._lock:
            e = self._items.get(key)
            if e is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return e
        path = self._disk_path(key)
        if path is not None and path.is_file():
            try:
                z = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
            else:
                if tuple(z.shape) == EMBED_SHAPE:
                    from casam.router import attention_pool

                    e = Embedding(key, z, geometry, attention_pool(z, temperature))
                    self.put(e, to_disk=False)
                    self.hits += 1
                    return e
        self.misses += 1
        return None

    def put(self, e: Embedding, to_disk: bool = True) -> None:
        with self._lock:
            if e.key in self._items:
                self._items.move_to_end(e.key)
            elif e.nbytes <= self.max_bytes:
                self._items[e.key] = e
                self._bytes += e.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        path = self._disk_path(e.key)
        if to_disk and path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    np.save(f, e.z.numpy().astype(np.float16), allow_pickle=False)
                os.replace(tmp, path)
            except OSError:
                tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
