"""A box on a cached embedding as one compiled call: prompt encoder + mask decoder in OpenVINO.

A box on a slice whose embedding is cached is what a user does most in the dock. In torch it is
about a hundred small operator calls, and in the dock each one hands the GIL back and forth
between the worker and the GUI thread (186 ms in the dock against 81 ms alone on the same CPU,
docs/benchmark-speed.md). Compiled by OpenVINO it is one call that holds the GIL once.

Only the plain case runs here: one image, boxes, no clicks, no previous logits, one mask per box,
no gradients. Everything else (clicks, training) stays in torch. The compiled model is built once
per (weights, OpenVINO version) into the encoders' checked cache (``_store``) and refused unless it
matches torch on probe boxes; any failure later hands the call back to torch for good, with one
notice, and the call is recomputed there.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import numpy as np

from casam.runtime import _child
from casam.runtime._engines import RuntimeUnavailable, package_version, rel_error, torch_threads
from casam.runtime._store import fetch_or_build, runtime_cache_dir

log = logging.getLogger("casam.runtime")

#: Largest relative L2 error of the compiled decoder's logits against torch on the probe boxes.
TOLERANCE = 1e-4
PROBE_BOXES = ((40.0, 52.0, 170.0, 200.0), (5.0, 9.0, 60.0, 41.0), (0.0, 0.0, 255.0, 255.0))


def _module(prompt_encoder, mask_decoder, image_pe):
    import torch

    class BoxDecoder(torch.nn.Module):
        """(1, 256, 64, 64) embedding, (1, 4) box -> (1, 1, 256, 256) logits, (1, 1) IoU."""

        def __init__(self):
            super().__init__()
            self.pe, self.dec = prompt_encoder, mask_decoder
            self.register_buffer("image_pe", image_pe)

        def forward(self, z, box):
            sparse, dense = self.pe(points=None, boxes=box, masks=None)
            return self.dec(
                image_embeddings=z,
                image_pe=self.image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

    return BoxDecoder().eval()


def _probe(seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 0.5, (1, 256, 64, 64)).astype(np.float32)
    return z, [np.array([b], np.float32) for b in PROBE_BOXES]


class BoxDecoderRuntime:
    """The compiled box decoder of one backbone, behind its guard (see the module's text).

    ``decode`` returns None whenever the call is not the plain case or the runtime is off, and
    the caller runs torch; ``notice`` says why it went off, once.
    """

    name, title = "openvino", "OpenVINO fp32"

    def __init__(self, backbone: str, weights_sha256: str, modules, recipe: tuple = ()):
        self.backbone, self.weights_sha256 = backbone, weights_sha256
        self.recipe = recipe  # as EncoderSource.recipe: to build in a child process
        self._modules = modules  # () -> (prompt_encoder, mask_decoder, image_pe), fp32 CPU
        self.notice: str | None = None
        self._model = None
        self._lock = threading.Lock()

    def fields(self) -> dict[str, str | int]:
        import torch

        return {
            "backbone": self.backbone,
            "weights_sha256": self.weights_sha256,
            "part": "box-decoder",
            "runtime": self.name,
            "runtime_version": package_version("openvino"),
            "exporter": f"torch-{torch.__version__}",
            "precision": "fp32",
        }

    def _torch_out(self, z: np.ndarray, box: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            m, _ = _module(*self._modules())(torch.from_numpy(z), torch.from_numpy(box))
        return m.numpy()

    def _build(self, folder: Path) -> dict:
        import openvino as ov
        import torch

        z, boxes = _probe()
        mod = _module(*self._modules())
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ov_model = ov.convert_model(mod, example_input=(torch.from_numpy(z), boxes[0]))
        ov.save_model(ov_model, str(folder / "box-decoder.xml"), False)
        model = self._load(folder)
        err = max(rel_error(self._run(model, z, b)[0], self._torch_out(z, b)) for b in boxes)
        if not err <= TOLERANCE:
            raise RuntimeUnavailable(f"compiled box decoder differs from torch by {err:.2g}")
        return {"probe_rel_error": err}

    def _load(self, folder: Path):
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": torch_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        return core.compile_model(core.read_model(str(folder / "box-decoder.xml")), "CPU", config)

    @staticmethod
    def _run(model, z: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = model([z, box])
        return np.array(out[0], np.float32, copy=True), np.array(out[1], np.float32, copy=True)

    @property
    def ready(self) -> bool:
        """Built and on: boxes are decoded here."""
        return self._model is not None

    def prepare(self) -> bool:
        """Build or load the compiled decoder (seconds the first time); False if it is off."""
        with self._lock:
            if self._model is None and self.notice is None:
                try:
                    root, fields = runtime_cache_dir(), self.fields()
                    _child.build_missing(self.recipe, root, fields, "box-decoder")
                    folder = fetch_or_build(root, fields, self._build)
                    self._model = self._load(folder)
                except Exception as e:  # noqa: BLE001 - an optional runtime: torch decodes
                    self._off(f"{type(e).__name__}: {str(e)[:160]}")
            return self._model is not None

    def _off(self, reason: str) -> None:
        self._model = None
        if self.notice is None:
            self.notice = f"compiled box decoder unavailable ({reason})"
            msg = f"{self.notice}; boxes are decoded by PyTorch (slower, same masks)"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def decode(self, z, boxes):
        """(1, 256, 64, 64) and (B, 4) CPU tensors -> ((B, 1, 256, 256), (B, 1)) tensors, or
        None: not ready or gone off (the caller decodes in torch)."""
        import torch

        model = self._model
        if model is None:
            return None
        zn = np.ascontiguousarray(z.detach().float().numpy())
        bn = np.ascontiguousarray(boxes.detach().float().numpy())
        try:
            with self._lock:  # one compiled model, one infer request: one call at a time
                outs = [self._run(model, zn, bn[i : i + 1]) for i in range(bn.shape[0])]
            masks = np.concatenate([m for m, _ in outs])
            iou = np.concatenate([q for _, q in outs])
            if masks.shape != (bn.shape[0], 1, 256, 256) or not np.isfinite(masks).all():
                raise RuntimeError(f"decoder output of shape {masks.shape} or not finite")
        except Exception as e:  # noqa: BLE001
            self._off(f"{type(e).__name__}: {str(e)[:160]}")
            return None
        return torch.from_numpy(masks), torch.from_numpy(iou)
