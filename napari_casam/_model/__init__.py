"""The dock's Qt-free model: state and actions, events for the views (never imports Qt)."""

from napari_casam._model.dock import DockModel
from napari_casam._model.layers import Layers
from napari_casam._model.learn import LearnModel
from napari_casam._model.routing import RouteState

__all__ = ["DockModel", "LearnModel", "Layers", "RouteState"]
