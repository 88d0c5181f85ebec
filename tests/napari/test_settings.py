"""The dock's remembered choices (pure, no viewer)."""

from __future__ import annotations

import json

from napari_casam._settings import FILENAME, PluginSettings, settings_path


def test_defaults_when_missing(tmp_path):
    s = PluginSettings.load(tmp_path / "none.json")
    assert s.backbone == "litemedsam" and s.device == "auto" and s.library == ""
    assert s.checkpoint == ""


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "s.json"
    s = PluginSettings(backbone="sam_vit_b", device="cpu", library=str(tmp_path / "lib"))
    s.checkpoints["sam_vit_b"] = "/models/sam_vit_b.pth"
    s.save(path)
    back = PluginSettings.load(path)
    assert back == s
    assert back.checkpoint == "/models/sam_vit_b.pth"


def test_broken_or_foreign_file_gives_defaults(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    assert PluginSettings.load(path) == PluginSettings()
    path.write_text(json.dumps({"backbone": "sam_vit_l", "unknown": 1, "checkpoints": 3}))
    s = PluginSettings.load(path)
    assert s.backbone == "sam_vit_l" and s.checkpoints == {}
    path.write_text("[1, 2]")
    assert PluginSettings.load(path) == PluginSettings()


def test_lives_in_casam_user_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CASAM_HOME", str(tmp_path))
    assert settings_path() == tmp_path / FILENAME
