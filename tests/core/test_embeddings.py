"""The embedding cache keeps to its byte budget; its disk cache never unpickles (issue 5)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
from casam_testing import TinyBackbone

from casam.embeddings import Embedding, EmbeddingCache
from casam.preprocess import Geometry
from casam.router import attention_pool

GEO = Geometry(64, 64, 256)
ONE = 256 * 64 * 64 * 4 + 256 * 4  # bytes of one embedding (z and feature, float32)


def fake(key: str, seed: int = 0, real: bool = False) -> Embedding:
    """An embedding of the real size (cheap constant values unless ``real``)."""
    if not real:
        return Embedding(key, torch.full((256, 64, 64), float(seed)), GEO, torch.zeros(256))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(256, 64, 64, generator=g)
    return Embedding(key, z, GEO, attention_pool(z))


def test_300_slices_never_exceed_the_budget():
    budget = 10 * ONE + ONE // 2
    cache = EmbeddingCache(budget)
    for i in range(300):
        cache.put(fake(f"slice{i}", i))
        assert cache.nbytes <= budget
        assert cache.nbytes == sum(e.nbytes for e in cache._items.values())
        assert len(cache) == min(i + 1, 10)
    # the 10 most recent slices are the ones kept
    assert list(cache._items) == [f"slice{i}" for i in range(290, 300)]


def test_lru_order():
    cache = EmbeddingCache(3 * ONE)
    for k in "abc":
        cache.put(fake(k))
    assert cache.get("a", GEO, 1.0) is not None  # a is now the most recent
    cache.put(fake("d"))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put(fake("c"))  # putting again refreshes, does not double count
    assert cache.nbytes == 3 * ONE
    cache.put(fake("e"))
    assert list(cache._items) == ["d", "c", "e"]
    assert cache.get("b", GEO, 1.0) is None and cache.misses == 1


def test_entry_larger_than_budget_is_not_kept():
    cache = EmbeddingCache(ONE - 1)
    cache.put(fake("big"))
    assert len(cache) == 0 and cache.nbytes == 0


def test_budget_holds_under_threads():
    budget = 5 * ONE
    cache = EmbeddingCache(budget)
    items = [fake(f"k{i}", i) for i in range(12)]
    errors = []

    def work(offset):
        try:
            for j in range(60):
                e = items[(j * 7 + offset) % len(items)]
                cache.put(e)
                cache.get(e.key, GEO, 1.0)
                assert cache.nbytes <= budget
        except AssertionError as err:  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.nbytes == sum(e.nbytes for e in cache._items.values()) <= budget


def test_disk_cache_round_trip_float16(tmp_path):
    cache = EmbeddingCache(2 * ONE, tmp_path / "disk")
    e = fake("vol-slice-7", 7, real=True)
    cache.put(e)
    f = tmp_path / "disk" / "vol-slice-7.npy"
    arr = np.load(f, allow_pickle=False)
    assert arr.dtype == np.float16 and arr.shape == (256, 64, 64)
    fresh = EmbeddingCache(2 * ONE, tmp_path / "disk")
    assert "vol-slice-7" in fresh
    got = fresh.get("vol-slice-7", GEO, 1.0)
    assert got is not None and got.z.dtype == torch.float32
    torch.testing.assert_close(got.z, e.z, atol=4e-3, rtol=1e-3)
    torch.testing.assert_close(got.feature, e.feature, atol=4e-3, rtol=1e-3)
    assert fresh.hits == 1 and len(fresh) == 1


def test_disk_cache_never_unpickles(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    disk = tmp_path / "disk"
    disk.mkdir()
    evil = np.empty(1, dtype=object)
    evil[0] = Payload()
    with open(disk / "evil.npy", "wb") as fh:
        np.save(fh, evil, allow_pickle=True)
    (disk / "torn.npy").write_bytes(b"\x93NUMPY garbage")
    cache = EmbeddingCache(ONE * 2, disk)
    assert cache.get("evil", GEO, 1.0) is None
    assert cache.get("torn", GEO, 1.0) is None
    assert not marker.exists()
    assert not (disk / "evil.npy").exists() and not (disk / "torn.npy").exists()


def test_predictor_prepares_a_volume_within_budget():
    from casam.predictor import Predictor

    budget = 8 * ONE
    p = Predictor(backbone=TinyBackbone(), library=False, cache_bytes=budget)
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, (60, 16, 16)).astype(np.int16)
    for sl in volume:
        p.embed(sl)
        assert p.cache.nbytes <= budget
    assert len(p.cache) == 8 and p.cache.misses == 60
    p.embed(volume[-1])
    assert p.cache.hits == 1


@pytest.mark.parametrize("budget", [0, 1])
def test_zero_budget_caches_nothing(budget):
    cache = EmbeddingCache(budget)
    cache.put(fake("x"))
    assert len(cache) == 0
