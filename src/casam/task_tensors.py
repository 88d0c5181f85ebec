"""The tensors of a task: its adapter's state and a VAE router state.

A task is stored as two safetensors files. ``alignment.safetensors`` holds the task's adapter:
``blocks.{i}.*`` of an :class:`~casam.alignment.AlignmentLayer` (adapter kind ``"alignment"``), or
``adapters.{site}.{down,up}.{weight,bias}`` of :class:`~casam.decoder_adapter.DecoderAdapters`
(kind ``"decoder"``, from task format 3); the file keeps its name for both kinds, so a release
that does not know the kind stops at the format version in ``task.json``.
``router.safetensors`` holds the VAE's ``vae.{enc1,enc2,dec1,dec2}.{weight,bias}`` and
``features``, the (N, 256) attention-pooled router features of the task's training images;
since task format 2 also ``features_std`` and ``features_max``, their channel std and max
(:mod:`casam.neighbours`; a task of format 1 has ``features`` only and is scored on that view).
This module is the one home of those names and shapes: it turns models into states and back,
reads and writes the bytes, and checks a foreign state before any model is built from it.
Checks take plain numbers (blocks, thresholds, beta) and the adapter kind's name, not metadata
objects. Importing it does not import torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from casam.backbones import EMBED_DIM
from casam.config import DEFAULT_BETA
from casam.errors import LibraryError

if TYPE_CHECKING:
    import torch

    from casam.alignment import AlignmentLayer
    from casam.router import VAE

VAE_LAYERS = ("enc1", "enc2", "dec1", "dec2")
VAE_KEYS = tuple(f"vae.{m}.{p}" for m in VAE_LAYERS for p in ("weight", "bias"))
FEATURES = "features"
#: The stored pooled views, in the order of ``casam.neighbours.VIEWS`` (a task has 1 or all 3).
VIEW_KEYS = (FEATURES, "features_std", "features_max")
State = dict[str, "torch.Tensor"]


def beta_of(settings: Mapping[str, Any]) -> float:
    """The KL weight a task's router was trained with (its settings, else the default)."""
    return float(settings.get("beta", DEFAULT_BETA))


def layer_from_state(state: State) -> AlignmentLayer:
    """An Alignment Layer (eval mode, frozen) from its state dict."""
    from casam.alignment import AlignmentLayer

    layer = AlignmentLayer(AlignmentLayer.blocks_in_state(state))
    layer.load_state_dict(state)
    return layer.eval().requires_grad_(False)


def router_state(vae: VAE, views: torch.Tensor) -> State:
    """A router state dict: the VAE's weights under ``vae.*`` and the (N, V, 256) pooled views
    of the training images (V = 1: ``features`` only, or 3)."""
    state = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    for k in range(views.shape[1]):
        state[VIEW_KEYS[k]] = views[:, k].contiguous()
    return state


def stored_views(state: State) -> torch.Tensor:
    """(N, V, 256) pooled views of a router state (V = 3 from format 2 on, 1 before)."""
    import torch

    keys = VIEW_KEYS if all(k in state for k in VIEW_KEYS) else VIEW_KEYS[:1]
    return torch.stack([state[k].float() for k in keys], dim=1)


def vae_from_state(state: State) -> VAE:
    """Rebuild a VAE (eval mode, frozen) from the ``vae.*`` entries of a router state dict."""
    from casam.router import VAE

    w1 = state["vae.enc1.weight"]
    vae = VAE(dim=w1.shape[1], hidden=w1.shape[0], latent=state["vae.dec1.weight"].shape[1])
    vae.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("vae.")})
    return vae.eval().requires_grad_(False)


def to_bytes(state: State) -> bytes:
    """A state dict as safetensors bytes (detached, on the CPU, contiguous)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


def from_bytes(blob: bytes, fname: str, where: str) -> State:
    """Safetensors bytes -> state dict (never unpickled); LibraryError naming ``fname``."""
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as e:  # noqa: BLE001 - any parser failure is the file's fault
        first = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise LibraryError(
            f"{where}: {fname} is not a valid safetensors file ({first}); refused"
        ) from None


@functools.lru_cache(maxsize=1)
def block_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names (without ``blocks.0.``) and shapes of one CAResBlock."""
    import torch

    from casam.alignment import AlignmentLayer

    with torch.device("meta"):
        layer = AlignmentLayer(1)
    return {k[len("blocks.0.") :]: tuple(v.shape) for k, v in layer.state_dict().items()}


def check_tensors(
    alignment: Any,
    router: Any,
    *,
    blocks: int,
    threshold: float,
    beta: float,
    where: str,
    knn_threshold: float | None = None,
    adapter: str = "alignment",
) -> None:
    """Raise LibraryError unless the states are the task's adapter (a ``blocks``-block Alignment
    Layer, or decoder adapters for ``adapter`` "decoder") and a VAE router on 256 features,
    every tensor finite, and both thresholds sane for that router."""
    import torch

    for part, state in (("alignment", alignment), ("router", router)):
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise LibraryError(
                f"{where}: the {part} weights are not a dict of named tensors; refused"
            )
    if adapter == "decoder":
        _check_decoder_adapters(alignment, where)
    else:
        _check_alignment(alignment, blocks, where)
    _check_router(router, where)
    for part, state in (("alignment", alignment), ("router", router)):
        for k, t in state.items():
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise LibraryError(
                    f"{where}: {part} tensor {k!r} is not finite floating point; refused"
                )
    _check_threshold(router, threshold, beta, where)
    _check_knn_threshold(knn_threshold, where)


def _check_alignment(alignment: State, blocks: int, where: str) -> None:
    block = block_shapes()
    if blocks < 1:
        raise LibraryError(
            f"{where}: its metadata gives {blocks} Alignment Layer blocks (at least 1); refused"
        )
    if len(alignment) != blocks * len(block):
        raise LibraryError(
            f"{where}: alignment.safetensors holds {len(alignment)} tensors, not the "
            f"{blocks}-block Alignment Layer its metadata describes; refused"
        )
    for i in range(blocks):
        for k, shape in block.items():
            t = alignment.get(f"blocks.{i}.{k}")
            if t is None or tuple(t.shape) != shape:
                raise LibraryError(
                    f"{where}: alignment.safetensors lacks blocks.{i}.{k} of shape {shape}; refused"
                )


#: The widest decoder adapter a task may hold (the transformer's own width).
MAX_BOTTLENECK = EMBED_DIM


@functools.lru_cache(maxsize=8)
def adapter_shapes(bottleneck: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a task's decoder adapters of width ``bottleneck``."""
    import torch

    from casam.decoder_adapter import DecoderAdapters

    with torch.device("meta"):
        adapters = DecoderAdapters(EMBED_DIM, bottleneck)
    return {k: tuple(v.shape) for k, v in adapters.state_dict().items()}


def _check_decoder_adapters(state: State, where: str) -> None:
    from casam.decoder_adapter import adapter_sites, site_key

    first = state.get(f"adapters.{site_key(adapter_sites()[0])}.down.weight")
    width = int(first.shape[0]) if first is not None and first.ndim == 2 else 0
    if not 1 <= width <= MAX_BOTTLENECK or {k: tuple(v.shape) for k, v in state.items()} != (
        adapter_shapes(width)
    ):
        raise LibraryError(
            f"{where}: alignment.safetensors does not hold the decoder adapters its metadata "
            f"describes (9 bottleneck adapters of width 1 to {MAX_BOTTLENECK} on "
            f"{EMBED_DIM} channels); refused"
        )


def _check_router(router: State, where: str) -> None:
    missing = [k for k in (*VAE_KEYS, FEATURES) if k not in router]
    if missing:
        raise LibraryError(f"{where}: router.safetensors lacks {', '.join(missing)}; refused")
    g = {k: tuple(router[k].shape) for k in (*VAE_KEYS, FEATURES)}
    hidden, latent2 = g["vae.enc1.weight"][0], g["vae.enc2.weight"][0]
    expected = {
        "vae.enc1.weight": (hidden, EMBED_DIM),
        "vae.enc1.bias": (hidden,),
        "vae.enc2.weight": (latent2, hidden),
        "vae.enc2.bias": (latent2,),
        "vae.dec1.weight": (hidden, latent2 // 2),
        "vae.dec1.bias": (hidden,),
        "vae.dec2.weight": (EMBED_DIM, hidden),
        "vae.dec2.bias": (EMBED_DIM,),
    }
    if latent2 % 2 or latent2 == 0 or hidden == 0 or any(g[k] != s for k, s in expected.items()):
        raise LibraryError(
            f"{where}: router.safetensors does not hold a VAE on {EMBED_DIM} features; refused"
        )
    f = g[FEATURES]
    if len(f) != 2 or f[1] != EMBED_DIM or f[0] < 1:
        raise LibraryError(f"{where}: router.safetensors has features of shape {f}; refused")
    extra = [k for k in VIEW_KEYS[1:] if k in router]
    if extra and (
        len(extra) != len(VIEW_KEYS) - 1 or any(tuple(router[k].shape) != f for k in extra)
    ):
        raise LibraryError(
            f"{where}: router.safetensors holds {', '.join(extra)} not matching its features "
            f"of shape {f} (it needs {', '.join(VIEW_KEYS)}, all alike); refused"
        )


def _check_knn_threshold(knn_threshold: float | None, where: str) -> None:
    from casam.routing import MAX_KNN_THRESHOLD, knn_threshold_is_sane

    if knn_threshold is not None and not knn_threshold_is_sane(knn_threshold):
        raise LibraryError(
            f"{where}: its neighbour threshold {knn_threshold:.3g} is not in (0, "
            f"{MAX_KNN_THRESHOLD}), so it would take images of any kind; refused. Ask for a "
            "freshly learned copy of the task"
        )


def _check_threshold(router: State, threshold: float, beta: float, where: str) -> None:
    """Refuse a threshold so far above the task's own scores that it would accept any image."""
    import torch

    from casam.routing import threshold_is_sane

    with torch.no_grad():
        own = float(vae_from_state(router).neg_elbo(router[FEATURES].float(), beta, False).max())
    if not math.isfinite(threshold) or not threshold_is_sane(threshold, own):
        raise LibraryError(
            f"{where}: its routing threshold {threshold:.3g} is far above the scores of its own "
            f"training images (at most {own:.3g}), so it would take images of any kind and SAM "
            "fallback could never happen; refused. Ask for a freshly learned copy of the task"
        )
