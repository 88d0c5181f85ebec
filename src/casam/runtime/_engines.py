"""The encoder runtimes: plain torch (the reference), torch bf16, ONNX Runtime and OpenVINO.

Every runtime maps a batch of preprocessed images ``(B, 3, S, S)`` float32 to embeddings
``(B, 256, 64, 64)`` float32 (numpy in, numpy out). The exported ones are built once per
(weights, runtime version, precision, batch size) and cached on disk (``_store``); a build is
refused unless its output matches the fp32 torch encoder on a probe batch within the precision's
tolerance, so a broken export never produces embeddings.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from casam.runtime import _child
from casam.runtime._store import fetch_or_build, read_extra, runtime_cache_dir

#: Largest relative L2 error of a fresh export against fp32 torch on the probe batch.
TOLERANCE = {"fp32": 1e-3, "bf16": 0.12}
EMBED_SHAPE = (256, 64, 64)
OPSET = 18


@dataclass(frozen=True)
class EncoderSource:
    """What a runtime needs to know of the backbone: who it is and how to get its encoder.

    ``weights_sha256``: full digest of the checkpoint; ``encoder()``: the frozen fp32 torch
    image encoder on the CPU (built on first call; exported runtimes need it only to build);
    ``recipe``: (registry name, checkpoint file) from which a child process can build the same
    backbone (``_child``; empty: exports are built in this process).
    """

    backbone: str
    weights_sha256: str
    input_size: int
    encoder: Callable[[], object]
    device: str = "cpu"
    recipe: tuple[str, str] | tuple[()] = ()


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot be used here (not installed, or its build or check failed)."""


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeUnavailable(f"{dist} is not installed") from None


def probe_batch(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed smooth, textured batch in [0, 1] for the build-time numerics check."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((batch, 3, size, size), np.float32)
    for b in range(batch):
        f = rng.uniform(2, 9, 3)
        base = 0.5 + 0.25 * np.sin(f[0] * 6.28 * xx) * np.cos(f[1] * 6.28 * yy)
        noise = rng.normal(0, 0.05, (size, size)).astype(np.float32)
        out[b] = np.clip(base + noise + 0.1 * np.sin(f[2] * 6.28 * (xx + yy)), 0, 1)[None]
    return out


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm((a - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-12))


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


class EncoderRuntime:
    """Base class. ``name`` is what ``CASAM_RUNTIME`` selects; ``identity`` is added to
    embedding cache keys ("" for the fp32 torch reference, so its keys stay as they were)."""

    name = "torch"
    title = "PyTorch fp32"
    precision = "fp32"
    version = ""
    batch = 8

    @property
    def identity(self) -> str:
        return f"{self.name}-{self.version}:{self.precision}"

    def prepare(self) -> None:
        """Build or load what the runtime needs (may take seconds the first time)."""

    def embed(self, x: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S)`` float32 -> ``(B, 256, 64, 64)`` float32."""
        raise NotImplementedError


class TorchRuntime(EncoderRuntime):
    """The encoder module itself: fp32 eager (reference), or bf16 autocast + channels-last."""

    def __init__(self, source: EncoderSource, bf16: bool = False):
        import torch

        self.source = source
        self.precision = "bf16" if bf16 else "fp32"
        self.name = "torch-bf16" if bf16 else "torch"
        self.title = "PyTorch bf16 (channels-last)" if bf16 else "PyTorch fp32"
        self.version = torch.__version__.split("+")[0]
        self._module = None

    @property
    def identity(self) -> str:
        return "" if self.precision == "fp32" else f"torch-{self.version}:bf16-cl"

    def prepare(self) -> None:
        if self._module is None:
            import torch

            m = self.source.encoder().to(self.source.device)
            if self.precision == "bf16":
                m = m.to(memory_format=torch.channels_last)
            self._module = m

    def embed(self, x: np.ndarray) -> np.ndarray:
        import torch

        self.prepare()
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.source.device)
        with torch.no_grad():
            if self.precision == "bf16":
                t = t.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    z = self._module(t)
            else:
                z = self._module(t)
        return z.float().cpu().numpy()


def export_onnx(source: EncoderSource, batch: int, path: Path) -> None:
    """The fp32 encoder as ONNX (opset 18) with a fixed batch size (TinyViT's traced graph
    bakes the batch into its reshapes, so each batch size is its own file)."""
    import torch

    enc = source.encoder()
    x = torch.from_numpy(probe_batch(batch, source.input_size))
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            enc, (x,), str(path), opset_version=OPSET, dynamo=False,
            input_names=["x"], output_names=["z"],
        )  # fmt: skip


def reference_output(source: EncoderSource, batch: int) -> np.ndarray:
    import torch

    with torch.no_grad():
        return source.encoder()(torch.from_numpy(probe_batch(batch, source.input_size))).numpy()


class ExportedRuntime(EncoderRuntime):
    """Common part of the runtimes that run an exported graph: one cached model per batch size,
    chunks of ``batch`` images plus single images for the rest."""

    dist = ""

    def __init__(self, source: EncoderSource, precision: str = "fp32", batch: int = 8):
        self.source = source
        self.precision = precision
        self.batch = batch
        self.version = package_version(self.dist)
        self._models: dict[int, object] = {}
        self.build_errors: dict[int, float] = {}

    @property
    def identity(self) -> str:
        return f"{self.dist}-{self.version}:{self.precision}"

    def fields(self, batch: int) -> dict[str, str | int]:
        import torch

        return {
            "backbone": self.source.backbone,
            "weights_sha256": self.source.weights_sha256,
            "input_size": self.source.input_size,
            "runtime": self.name,
            "runtime_version": self.version,
            "exporter": f"torch-{torch.__version__}-opset{OPSET}",
            "precision": self.precision,
            "batch": batch,
        }

    def _write(self, source: EncoderSource, batch: int, folder: Path) -> None:
        raise NotImplementedError

    def _load(self, folder: Path, batch: int) -> object:
        raise NotImplementedError

    def _run(self, model: object, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _build(self, batch: int, folder: Path) -> dict:
        self._write(self.source, batch, folder)
        out = self._run(self._load(folder, batch), probe_batch(batch, self.source.input_size))
        err = rel_error(out, reference_output(self.source, batch))
        if not err <= TOLERANCE[self.precision]:
            raise RuntimeUnavailable(
                f"{self.title} export differs from the torch encoder by {err:.2g} (relative)"
            )
        return {"probe_rel_error": err}

    def model(self, batch: int) -> object:
        if batch not in self._models:
            root, fields = runtime_cache_dir(), self.fields(batch)
            _child.build_missing(self.source.recipe, root, fields, "encoder", self.name, batch)
            folder = fetch_or_build(root, fields, lambda f: self._build(batch, f))
            self.build_errors[batch] = float(read_extra(folder).get("probe_rel_error", "nan"))
            self._models[batch] = self._load(folder, batch)
        return self._models[batch]

    def prepare(self) -> None:
        self.model(1)

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        n, outs, i = x.shape[0], [], 0
        while i < n:
            b = self.batch if n - i >= self.batch > 1 else 1
            outs.append(self._run(self.model(b), x[i : i + b]))
            i += b
        return np.concatenate(outs) if len(outs) > 1 else outs[0]


class OnnxRuntime(ExportedRuntime):
    name, title, dist = "onnxruntime", "ONNX Runtime fp32", "onnxruntime"

    def _write(self, source: EncoderSource, batch: int, folder: Path) -> None:
        export_onnx(source, batch, folder / "encoder.onnx")

    def _load(self, folder: Path, batch: int) -> object:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = torch_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(
            str(folder / "encoder.onnx"), so, providers=["CPUExecutionProvider"]
        )

    def _run(self, model, x: np.ndarray) -> np.ndarray:
        return model.run(None, {"x": x})[0]


class OpenVinoRuntime(ExportedRuntime):
    """OpenVINO on the CPU; ``bf16`` asks its CPU plugin for bf16 inference (AVX512-BF16/AMX)."""

    name, dist = "openvino", "openvino"

    def __init__(self, source: EncoderSource, precision: str = "fp32", batch: int = 8):
        super().__init__(source, precision, batch)
        self.name = "openvino-bf16" if precision == "bf16" else "openvino"
        self.title = f"OpenVINO {'bf16' if precision == 'bf16' else 'fp32'}"

    def _write(self, source: EncoderSource, batch: int, folder: Path) -> None:
        import openvino as ov

        onnx_path = folder / "tmp-encoder.onnx"
        export_onnx(source, batch, onnx_path)
        ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "encoder.xml"), False)
        onnx_path.unlink()

    def _load(self, folder: Path, batch: int) -> object:
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": torch_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        core = ov.Core()
        return core.compile_model(core.read_model(str(folder / "encoder.xml")), "CPU", config)

    def _run(self, model, x: np.ndarray) -> np.ndarray:
        return np.array(model(x)[0], dtype=np.float32, copy=True)
