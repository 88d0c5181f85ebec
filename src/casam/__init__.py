"""CA-SAM engine: frozen SAM + per-task Alignment Layers + VAE routers.

Importing this package loads neither napari nor Qt, and not even torch: the heavy
modules are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Predictor": "casam.predictor",
    "Prediction": "casam.predictor",
    "TaskLibrary": "casam.library",
    "TaskInfo": "casam.library",
    "LearnSettings": "casam.config",
    "learn_task": "casam.training",
    "iter_learn_task": "casam.training",
    "get_backbone": "casam.sam",
    "BACKBONES": "casam.backbones",
    "iou": "casam.metrics",
    "boundary_iou": "casam.metrics",
    "CasamError": "casam.errors",
    "RouteDecision": "casam.routing",
}

__all__ = [
    "BACKBONES",
    "CasamError",
    "LearnSettings",
    "Prediction",
    "Predictor",
    "RouteDecision",
    "TaskInfo",
    "TaskLibrary",
    "__version__",
    "boundary_iou",
    "get_backbone",
    "iou",
    "iter_learn_task",
    "learn_task",
]

if TYPE_CHECKING:
    from casam.backbones import BACKBONES
    from casam.config import LearnSettings
    from casam.errors import CasamError
    from casam.library import TaskInfo, TaskLibrary
    from casam.metrics import boundary_iou, iou
    from casam.predictor import Prediction, Predictor
    from casam.routing import RouteDecision
    from casam.sam import get_backbone
    from casam.training import iter_learn_task, learn_task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'casam' has no attribute {name!r}")
