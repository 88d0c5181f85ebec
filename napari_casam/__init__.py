"""napari-casam: the napari plugin of CA-SAM (box prompts, routed tasks, learn new tasks).

Importing this package is cheap: torch, the models and Qt load when the dock first needs
them, so napari starts as fast with the plugin installed as without it.
"""

from __future__ import annotations

__all__: list[str] = []
