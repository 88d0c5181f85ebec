"""``segment_anything.modeling`` without paying for ``segment_anything``'s package ``__init__``.

That ``__init__`` imports SAM's predictor and mask generator, which import torchvision (and
through ``torchvision.ops`` torch._dynamo): about 2-5 s of start-up that building a prompt
encoder and a mask decoder does not need. Here the package is registered as a shell whose
``__init__`` runs on the first attribute access (``from segment_anything import
sam_model_registry`` still works and gets the real package).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

_LOCK = threading.RLock()
PACKAGE = "segment_anything"


def _shell(spec) -> ModuleType:
    pkg = importlib.util.module_from_spec(spec)
    state = {"done": False}

    def complete(name: str):
        with _LOCK:
            if not state["done"]:
                state["done"] = True
                del pkg.__getattr__
                spec.loader.exec_module(pkg)
        if name in pkg.__dict__:
            return pkg.__dict__[name]
        raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")

    pkg.__getattr__ = complete
    return pkg


def modeling() -> ModuleType:
    """The ``segment_anything.modeling`` module (PromptEncoder, MaskDecoder, ...)."""
    with _LOCK:
        if f"{PACKAGE}.modeling" in sys.modules:
            return sys.modules[f"{PACKAGE}.modeling"]
        if PACKAGE not in sys.modules:
            spec = importlib.util.find_spec(PACKAGE)
            if spec is None or spec.loader is None:
                return importlib.import_module(f"{PACKAGE}.modeling")
            sys.modules[PACKAGE] = _shell(spec)
        return importlib.import_module(f"{PACKAGE}.modeling")
