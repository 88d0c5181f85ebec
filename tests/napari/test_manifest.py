"""Packaging of the plugin: manifest, its installed copy, light import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_copy_is_identical():
    top = (ROOT / "napari.yaml").read_bytes()
    carried = (ROOT / "napari_casam" / "napari.yaml").read_bytes()
    assert top == carried, "napari_casam/napari.yaml must be an exact copy of napari.yaml"


def test_manifest_is_valid_and_points_to_real_code():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(ROOT / "napari.yaml")
    assert pm.name == "napari-casam"
    assert pm.display_name == "CA-SAM"
    pm.validate_imports()
    commands = {c.id: c.python_name for c in pm.contributions.commands}
    assert commands["napari-casam.make_widget"] == "napari_casam._widget:CasamWidget"
    assert [w.command for w in pm.contributions.widgets] == ["napari-casam.make_widget"]
    assert {s.key for s in pm.contributions.sample_data} >= {"ct_spleen"}


@pytest.mark.skipif(shutil.which("npe2") is None, reason="npe2 command not installed")
def test_npe2_validate_installed_plugin():
    out = subprocess.run(
        ["npe2", "validate", "napari-casam"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("napari_casam, napari_casam._sample_data", ("torch", "casam.predictor", "qtpy", "napari")),
        (
            "napari_casam._widget",
            ("torch", "casam.predictor", "casam.training", "segment_anything"),
        ),
    ],
)
def test_importing_the_plugin_is_light(modules, forbidden):
    """napari starts fast with the plugin: torch and the models load when first used."""
    code = (
        f"import sys, {modules}; "
        f"heavy = [m for m in {forbidden!r} if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sample_data_are_real_images_with_ground_truth():
    from napari_casam import _sample_data

    for fn in (_sample_data.ct_spleen, _sample_data.mr_brain_tumour):
        (img, img_kw, img_type), (gt, gt_kw, gt_type) = fn()
        assert (img_type, gt_type) == ("image", "labels")
        assert img.shape == gt.shape
        assert gt.any() and set(map(int, gt.ravel()[::7])) <= {0, 1}
        assert img.std() > 10  # a real image, not a blank
        assert "ground truth" in gt_kw["name"]
    size = sum(p.stat().st_size for p in _sample_data.DATA.glob("*.tif"))
    assert size < 1 << 20
