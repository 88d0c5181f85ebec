"""Encoder runtimes: exported once and cached, checked, batched, and a guarded fallback to torch.

A tiny convolutional encoder with the real output shape (256, 64, 64) stands in for the TinyViT,
so exports take well under a second; the real LiteMedSAM runs in the ``slow`` test at the end.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from casam.errors import InputError
from casam.runtime import (
    ENV,
    RUNTIMES,
    EncoderSource,
    GuardedRuntime,
    RuntimeFallbackWarning,
    RuntimeUnavailable,
    _engines,
    _store,
    default_order,
    probe_batch,
    rel_error,
    requested_runtime,
)


def tiny_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 256, 1), nn.GELU(), nn.Conv2d(256, 256, 1))
    return enc.eval().requires_grad_(False)


@pytest.fixture
def source(tmp_path, monkeypatch) -> EncoderSource:
    monkeypatch.setenv("CASAM_RUNTIME_CACHE", str(tmp_path / "runtimes"))
    enc = tiny_encoder()
    return EncoderSource("tiny:000000000000", "0" * 64, 256, lambda: enc)


def torch_out(source: EncoderSource, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return source.encoder()(torch.from_numpy(x)).numpy()


def count_exports(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = _engines.export_onnx

    def counted(source, batch, path):
        calls.append(batch)
        real(source, batch, path)

    monkeypatch.setattr(_engines, "export_onnx", counted)
    return calls


# ---- the disk store ---------------------------------------------------------------------------


def test_store_builds_once_and_rebuilds_a_broken_or_stale_folder(tmp_path):
    built, reasons = [], []

    def build(folder):
        built.append(folder)
        (folder / "model.bin").write_bytes(b"weights")
        return {"note": 1}

    fields = {"runtime": "x", "runtime_version": "1.0"}
    a = _store.fetch_or_build(tmp_path, fields, build, reasons.append)
    assert _store.fetch_or_build(tmp_path, fields, build, reasons.append) == a
    assert len(built) == 1 and _store.read_extra(a) == {"note": 1}

    (a / "model.bin").write_bytes(b"weightz")  # corrupted in place
    assert _store.fetch_or_build(tmp_path, fields, build, reasons.append) == a
    assert len(built) == 2 and reasons == ["model.bin does not match its digest"]

    (a / _store.MANIFEST).write_text("{not json")
    _store.fetch_or_build(tmp_path, fields, build, reasons.append)
    assert len(built) == 3 and "unreadable manifest" in reasons[-1]

    manifest = json.loads((a / _store.MANIFEST).read_text())
    manifest["fields"]["runtime_version"] = "0.9"  # a folder someone else left under this name
    (a / _store.MANIFEST).write_text(json.dumps(manifest))
    _store.fetch_or_build(tmp_path, fields, build, reasons.append)
    assert len(built) == 4 and "another model or runtime version" in reasons[-1]

    other = _store.fetch_or_build(tmp_path, {**fields, "runtime_version": "2.0"}, build)
    assert other != a and len(built) == 5  # a new version is a new key


def test_store_is_built_reads_the_manifest_only(tmp_path):
    fields = {"runtime": "x", "runtime_version": "1.0"}
    assert not _store.is_built(tmp_path, fields)
    a = _store.fetch_or_build(tmp_path, fields, lambda f: (f / "m.bin").write_bytes(b"w") and {})
    assert _store.is_built(tmp_path, fields)
    assert not _store.is_built(tmp_path, {**fields, "runtime_version": "2.0"})
    (a / "m.bin").write_bytes(b"z")  # files are checked by fetch_or_build before use, not here
    assert _store.is_built(tmp_path, fields)
    (a / _store.MANIFEST).write_text("{not json")
    assert not _store.is_built(tmp_path, fields)


def test_store_failed_build_leaves_nothing(tmp_path):
    def build(folder):
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeUnavailable("export failed")

    with pytest.raises(RuntimeUnavailable):
        _store.fetch_or_build(tmp_path, {"runtime": "x"}, build)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# ---- exported runtimes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["openvino", "onnxruntime"])
def test_exported_runtime_matches_torch_and_is_built_once(name, source, monkeypatch):
    pytest.importorskip(RUNTIMES[name][0])
    exports = count_exports(monkeypatch)
    rt = RUNTIMES[name][1](source)
    rt.batch = 4
    x = probe_batch(10, 256, seed=3)
    z = rt.embed(x)  # chunks of 4, 4, then 1, 1
    assert z.shape == (10, 256, 64, 64) and z.dtype == np.float32
    assert rel_error(z, torch_out(source, x)) < 1e-4
    assert sorted(exports) == [1, 4]
    again = RUNTIMES[name][1](source)  # a new process: loads the cached export
    again.batch = 4
    assert rel_error(again.embed(x[:5]), torch_out(source, x[:5])) < 1e-4
    assert sorted(exports) == [1, 4]
    assert name in again.identity and again.version in again.identity


def test_openvino_bf16_is_its_own_identity_and_close(source):
    pytest.importorskip("openvino")
    f32, bf16 = RUNTIMES["openvino"][1](source), RUNTIMES["openvino-bf16"][1](source)
    assert f32.identity != bf16.identity and "bf16" in bf16.identity
    x = probe_batch(1, 256, seed=1)
    assert rel_error(bf16.embed(x), torch_out(source, x)) < _engines.TOLERANCE["bf16"]


def test_an_export_that_disagrees_with_torch_is_refused(source, monkeypatch):
    pytest.importorskip("openvino")
    rt = RUNTIMES["openvino"][1](source)
    real_run = type(rt)._run
    monkeypatch.setattr(type(rt), "_run", lambda self, m, x: real_run(self, m, x) * 1.5)
    with pytest.raises(RuntimeUnavailable, match="differs from the torch encoder"):
        rt.prepare()
    root = _store.runtime_cache_dir()
    assert [p for p in root.iterdir() if p.is_dir()] == []


def test_a_corrupted_cached_export_is_rebuilt_not_used(source, monkeypatch):
    pytest.importorskip("openvino")
    exports = count_exports(monkeypatch)
    RUNTIMES["openvino"][1](source).prepare()
    (folder,) = [p for p in _store.runtime_cache_dir().iterdir() if p.is_dir()]
    data = bytearray((folder / "encoder.bin").read_bytes())
    data[100:108] = b"\xff" * 8
    (folder / "encoder.bin").write_bytes(bytes(data))
    rt = RUNTIMES["openvino"][1](source)
    x = probe_batch(1, 256, seed=2)
    assert rel_error(rt.embed(x), torch_out(source, x)) < 1e-4
    assert exports == [1, 1]


# ---- choice and fallback ----------------------------------------------------------------------


def test_requested_runtime_from_env_and_checked(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert requested_runtime() == "auto"
    monkeypatch.setenv(ENV, "Torch")
    assert requested_runtime() == "torch"
    assert requested_runtime("openvino") == "openvino"
    with pytest.raises(InputError, match="unknown encoder runtime 'tensorrt'"):
        requested_runtime("tensorrt")


def test_default_order_follows_the_machine(monkeypatch):
    assert default_order("cuda") == ["torch"] and default_order("mps") == ["torch"]
    # bf16 first only where the CPU multiplies bf16 natively (AVX512-BF16 / AMX)
    assert default_order("cpu", bf16=True) == ["openvino-bf16", "openvino", "onnxruntime", "torch"]
    assert default_order("cpu", bf16=False) == ["openvino", "onnxruntime", "torch"]
    from casam.runtime import _cpu

    for native in (True, False):
        monkeypatch.setattr(_cpu, "bf16_native", lambda native=native: native)
        assert (default_order("cpu")[0] == "openvino-bf16") is native


class Broken(_engines.EncoderRuntime):
    name, title, version = "broken", "Broken", "1"

    def __init__(self, how: str):
        self.how = how

    def embed(self, x):
        if self.how == "raise":
            raise RuntimeError("device lost")
        z = np.zeros((x.shape[0], 256, 64, 64), np.float32)
        z[0, 0, 0, 0] = np.nan
        return z


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_guard_falls_back_to_torch_once_with_one_notice(how, source, monkeypatch):
    monkeypatch.setitem(RUNTIMES, "openvino", (None, lambda s: Broken(how)))
    g = GuardedRuntime(source, "openvino")
    assert g.identity == "broken-1:fp32"
    x = probe_batch(2, 256)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        z1 = g.embed(x)
        z2 = g.embed(x)
    assert [type(m.message) for m in w] == [RuntimeFallbackWarning]
    assert np.array_equal(z1, torch_out(source, x)) and np.array_equal(z2, z1)
    assert g.identity == "" and g.name == "torch" and "openvino" in g.describe()


def test_guard_missing_runtime_uses_torch(source, monkeypatch):
    monkeypatch.setitem(RUNTIMES, "openvino", ("no_such_module_casam", RUNTIMES["openvino"][1]))
    with pytest.warns(RuntimeFallbackWarning, match="not installed"):
        g = GuardedRuntime(source, "openvino")
    assert g.name == "torch"
    x = probe_batch(1, 256)
    assert np.array_equal(g.embed(x), torch_out(source, x))


def test_embedding_keys_differ_between_runtimes(source):
    from casam.embeddings import image_key
    from casam.sam import Backbone

    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    keys = set()
    for name in ("torch", "torch-bf16", "openvino", "openvino-bf16"):
        b = Backbone.__new__(Backbone)
        b.identity = "tiny:000000000000"
        b.runtime = GuardedRuntime(source, name)
        keys.add(image_key(img, b.embed_identity))
    assert len(keys) == 4
    b.runtime = GuardedRuntime(source, "torch")
    assert b.embed_identity == b.identity  # fp32 torch keeps the keys of earlier releases


def test_predictor_embeds_in_batches_and_skips_cached(source, monkeypatch):
    """iter_embed: uncached images go through the runtime in batches; cached ones are not
    encoded again; results equal one-by-one embedding."""
    import threading

    from casam.backbones import BACKBONES
    from casam.predictor import Predictor
    from casam.sam import Backbone

    calls: list[int] = []

    class Counted(_engines.TorchRuntime):
        batch = 3

        def embed(self, x):
            calls.append(x.shape[0])
            return super().embed(x)

    monkeypatch.setitem(RUNTIMES, "torch", (None, lambda s: Counted(s)))
    bb = Backbone.__new__(Backbone)
    bb.spec, bb.name, bb.input_size = BACKBONES["litemedsam"], "tiny", 256
    bb.identity, bb.device, bb._lock = "tiny:000000000000", torch.device("cpu"), threading.Lock()
    bb.runtime = GuardedRuntime(source, "torch")
    p = Predictor(backbone=bb, library=False)
    rng = np.random.default_rng(0)
    images = [(rng.random((40 + i, 50)) * 255).astype(np.uint8) for i in range(7)]
    p.embed(images[2])
    calls.clear()
    got = list(p.iter_embed(images))
    assert [i for i, _ in got] == list(range(7))
    assert calls == [3, 3]  # images 0, 1 | 2 cached | 3, 4, 5 | 6 ... in batches of 3
    for (_, e), img in zip(got, images, strict=True):
        z, _ = bb.encode(img)
        assert torch.allclose(e.z, z, atol=1e-5)


LEAN_START = """
import json, sys
import numpy as np
from casam import Predictor
p = Predictor(library=False)
img = (np.arange(200 * 180).reshape(200, 180) % 997).astype(np.int16)
e = p.embed(img)
np.save(sys.argv[1], e.z.numpy())
print(json.dumps({"timm": "timm" in sys.modules, "torchvision": "torchvision" in sys.modules,
                  "key": e.key, "runtime": p.backbone.runtime.describe()}))
"""


@pytest.mark.slow
def test_litemedsam_exported_once_then_starts_without_timm(tmp_path):
    """The real encoder through OpenVINO: the first process exports it; a later one embeds from
    the cache without importing timm (TinyViT) or torchvision, and agrees with fp32 torch."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    env = {**__import__("os").environ, "CASAM_RUNTIME": "openvino"}
    env.update(CASAM_RUNTIME_CACHE=str(tmp_path / "rt"), CASAM_HOME=str(tmp_path / "home"))
    runs = []
    for k in range(2):
        out = tmp_path / f"z{k}.npy"
        r = subprocess.run(
            [sys.executable, "-c", LEAN_START, str(out)], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append((json.loads(r.stdout.strip().splitlines()[-1]), np.load(out)))
    (first, z0), (second, z1) = runs
    assert "OpenVINO fp32" in second["runtime"] and not second["timm"]
    assert not second["torchvision"] and second["key"] == first["key"]
    assert np.array_equal(z0, z1)
    env["CASAM_RUNTIME"] = "torch"
    r = subprocess.run(
        [sys.executable, "-c", LEAN_START, str(tmp_path / "ref.npy")], env=env, text=True,
        capture_output=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ref = json.loads(r.stdout.strip().splitlines()[-1])
    assert ref["key"] != first["key"]  # other numerics, other cache key
    assert rel_error(z1, np.load(tmp_path / "ref.npy")) < 1e-4


# ---- building in a child process ------------------------------------------------------------


@pytest.fixture
def child_builds(monkeypatch):
    """``_child.build`` replaced by a stand-in that records each call and, like the real child,
    builds the export into the store (or fails without building when ``fail`` is set)."""
    from casam.runtime import _child

    calls: list[tuple] = []
    state = {"fail": False}

    def fake(recipe, part, runtime="", batch=1):
        calls.append((recipe, part, runtime, batch))
        if state["fail"]:
            return False
        rt = RUNTIMES[runtime][1](built_source)
        rt.model(batch)
        return True

    monkeypatch.setattr(_child, "build", fake)
    monkeypatch.setattr(_child, "_enabled", True)
    built_source = None

    def set_source(src):
        nonlocal built_source
        built_source = src

    return calls, state, set_source


def test_a_missing_export_is_built_in_the_child_once(source, child_builds, monkeypatch):
    pytest.importorskip("onnxruntime")
    calls, _, set_source = child_builds
    set_source(source)
    with_recipe = dataclasses.replace(source, recipe=("tiny", "/some/checkpoint.pth"))
    exports = count_exports(monkeypatch)
    RUNTIMES["onnxruntime"][1](with_recipe).model(1)
    assert calls == [(("tiny", "/some/checkpoint.pth"), "encoder", "onnxruntime", 1)]
    assert exports == [1]  # the child's build, then the store's checked folder was loaded
    rt = RUNTIMES["onnxruntime"][1](with_recipe)
    x = probe_batch(1, 256)
    assert rel_error(rt.embed(x), torch_out(source, x)) < 1e-4
    assert len(calls) == 1 and exports == [1]  # ready: no child, no export


def test_a_failed_child_build_is_done_here(source, child_builds, monkeypatch):
    pytest.importorskip("onnxruntime")
    calls, state, _ = child_builds
    state["fail"] = True
    exports = count_exports(monkeypatch)
    rt = RUNTIMES["onnxruntime"][1](dataclasses.replace(source, recipe=("tiny", "")))
    x = probe_batch(1, 256)
    assert rel_error(rt.embed(x), torch_out(source, x)) < 1e-4
    assert len(calls) == 1 and exports == [1]


def test_no_child_without_a_recipe_or_when_off(source, child_builds, monkeypatch):
    pytest.importorskip("onnxruntime")
    from casam.runtime import _child, build_in_child

    calls, _, _ = child_builds
    RUNTIMES["onnxruntime"][1](source).model(1)  # no recipe
    build_in_child(False)
    assert not _child.enabled()
    RUNTIMES["onnxruntime"][1](dataclasses.replace(source, recipe=("tiny", ""))).model(2)
    assert calls == []


def test_a_hung_child_is_given_up_so_the_caller_builds(tmp_path, monkeypatch):
    """A child still building after ``CHILD_TIMEOUT_S`` is killed (by ``subprocess.run``) and
    ``build`` says it failed, so the caller builds the export itself instead of waiting forever."""
    import subprocess

    from casam.runtime import _child

    monkeypatch.setenv("CASAM_RUNTIME_CACHE", str(tmp_path / "rt"))
    seen = {}

    def hangs(cmd, **kw):
        seen.update(kw)
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(_child.subprocess, "run", hangs)
    assert _child.build(("litemedsam", ""), "box-decoder") is False
    assert seen["timeout"] == _child.CHILD_TIMEOUT_S


@pytest.mark.slow
def test_the_child_builds_the_real_box_decoder(tmp_path, monkeypatch):
    """``python -m casam.runtime._child`` builds LiteMedSAM's box decoder into the store that
    the caller then loads without building it again."""
    pytest.importorskip("openvino")
    from casam.runtime import BoxDecoderRuntime, _child
    from casam.runtime._store import is_built, runtime_cache_dir
    from casam.sam import _recipe, get_backbone

    monkeypatch.setenv("CASAM_RUNTIME_CACHE", str(tmp_path / "rt"))
    bb = get_backbone("litemedsam", runtime="torch")
    parts = (bb.prompt_encoder, bb.mask_decoder, bb._image_pe)
    dec = BoxDecoderRuntime(bb.identity, bb.digest, lambda: parts, _recipe(bb))
    assert not is_built(runtime_cache_dir(), dec.fields())
    assert _child.build(_recipe(bb), "box-decoder")
    assert is_built(runtime_cache_dir(), dec.fields())
    monkeypatch.setattr(dec, "_build", lambda folder: pytest.fail("built again"))
    assert dec.prepare() and dec.notice is None
