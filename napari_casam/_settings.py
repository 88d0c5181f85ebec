"""The dock's choices remembered between sessions, as a small JSON file.

The file lives in ``casam.config.user_data_dir()`` (``CASAM_HOME`` overrides it), next to
the default task library.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

log = logging.getLogger(__name__)

FILENAME = "napari-settings.json"


def settings_path() -> Path:
    from casam.config import user_data_dir

    return user_data_dir() / FILENAME


@dataclass
class PluginSettings:
    """What the user chose last time; empty strings mean "the default"."""

    backbone: str = "litemedsam"
    device: str = "auto"
    library: str = ""
    """Task library folder; "" = ``casam.config.default_library_dir()``."""
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Checkpoint file per backbone name (backbones that are not bundled need one)."""
    auto_route: bool = True
    """Embed and route the slice in view as soon as the user stops on it."""
    disk_cache: bool = False
    """Keep embeddings on disk (``casam.config.default_cache_dir()``) between sessions."""

    @classmethod
    def load(cls, path: Path | None = None) -> PluginSettings:
        """Read the settings; a missing or broken file gives the defaults."""
        path = path or settings_path()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable settings %s: %s", path, exc)
            return cls()
        if not isinstance(raw, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in raw.items() if k in known}
        if not isinstance(kept.get("checkpoints", {}), dict):
            kept.pop("checkpoints")
        try:
            return cls(**kept)
        except TypeError:
            return cls()

    def save(self, path: Path | None = None) -> None:
        """Write the settings atomically; failures are logged, never raised."""
        path = path or settings_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("could not save settings to %s: %s", path, exc)

    @property
    def checkpoint(self) -> str:
        """Checkpoint of the chosen backbone ("" when none)."""
        return self.checkpoints.get(self.backbone, "")
