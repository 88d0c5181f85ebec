"""Fixtures of the napari plugin tests: real slices, a private CASAM_HOME, dock helpers.

GUI tests need a display: ``xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/napari``.
Embeddings are shared between tests through a session-wide disk cache (the plugin's "Keep
embeddings on disk" setting), so each real slice is embedded once per test session.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_casam._session import guard_triton

if importlib.util.find_spec("PyQt6") is not None:
    os.environ.setdefault("QT_API", "pyqt6")  # the extra's binding, also where PyQt5 lingers

guard_triton()  # as the dock does: triton + Mesa's LLVM in one process crash (see guard_triton)

DATA = Path(__file__).resolve().parents[1] / "data"
LEARN_SLICES = list(range(0, 24, 2))  # 12 CT spleen slices for training; 25.. stay unseen
TINY = {"epochs": 1, "vae_steps": 200, "augment": 0}


def read_task(name: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    return tifffile.imread(DATA / name / "images.tif"), tifffile.imread(DATA / name / "masks.tif")


@pytest.fixture(scope="session")
def ct_spleen() -> tuple[np.ndarray, np.ndarray]:
    """29 consecutive real axial CT slices (int16 HU) and the spleen mask (uint8 0/1)."""
    return read_task("ct_spleen")


@pytest.fixture(scope="session")
def mr_brain() -> tuple[np.ndarray, np.ndarray]:
    """Real MR brain slices (int16) with tumour masks: an unseen kind for a CT task."""
    return read_task("mr_brain_tumour")


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(autouse=True)
def casam_home(tmp_path, monkeypatch, embedding_cache) -> Path:
    """A fresh per-user folder (settings, default library) for every test."""
    from napari_casam._settings import PluginSettings

    home = tmp_path / "casam-home"
    monkeypatch.setenv("CASAM_HOME", str(home))
    monkeypatch.setenv("CASAM_CACHE", str(embedding_cache))
    monkeypatch.delenv("CASAM_LIBRARY", raising=False)
    # the dock turns on building exports in a child process for the whole process: not beyond
    monkeypatch.setattr("casam.runtime._child._enabled", False)
    PluginSettings(disk_cache=True).save(home / "napari-settings.json")
    return home


@pytest.fixture(scope="session")
def learned_library(tmp_path_factory, ct_spleen, embedding_cache) -> Path:
    """A library with one task "CT spleen" learned (tiny schedule) from 12 real CT slices."""
    from casam import LearnSettings, Predictor, TaskLibrary, learn_task

    root = tmp_path_factory.mktemp("learned") / "library"
    lib = TaskLibrary(root)
    p = Predictor(library=lib, disk_cache=embedding_cache)
    images, masks = ct_spleen
    learn_task(
        [images[i] for i in LEARN_SLICES],
        [masks[i] for i in LEARN_SLICES],
        name="CT spleen",
        library=lib,
        predictor=p,
        settings=LearnSettings(**TINY),
    )
    return root


@pytest.fixture
def with_learned_task(learned_library, casam_home) -> Path:
    """Copy the learned library into this test's default library folder."""
    dest = casam_home / "library"
    shutil.copytree(learned_library, dest)
    return dest


@pytest.fixture
def notes():
    """Messages of napari notifications (warnings, errors, infos) shown during the test."""
    from napari.utils.notifications import notification_manager

    got: list[str] = []

    def keep(n):
        got.append(str(n.message))

    notification_manager.notification_ready.connect(keep)
    yield got
    notification_manager.notification_ready.disconnect(keep)


def _wait_idle(qtbot, widget, timeout: int = 300_000, background: bool = False) -> None:
    """Until no job the user asked for runs or waits (and, with ``background``, no prefetch)."""
    qtbot.waitUntil(
        lambda: not widget.busy and not (background and widget.jobs.background_busy),
        timeout=timeout,
    )


@pytest.fixture
def wait_idle(qtbot):
    """``wait_idle(widget)``: wait for every background job of the dock (loading, embeddings,
    segmentation, training); generous timeouts for a loaded 2-core machine."""
    return lambda widget, timeout=300_000: _wait_idle(qtbot, widget, timeout)


@pytest.fixture
def open_dock(qtbot):
    """Open the CA-SAM dock through the plugin manifest; waits for the model to load."""
    opened = []

    def open_(viewer, wait: bool = True):
        _, widget = viewer.window.add_plugin_dock_widget("napari-casam", "CA-SAM")
        opened.append(widget)
        if wait:
            _wait_idle(qtbot, widget)
        return widget

    yield open_
    for w in opened:
        try:
            w.close_jobs()
            # a prefetch still embedding would hold the viewer past napari's leak check
            _wait_idle(qtbot, w, timeout=120_000, background=True)
        except RuntimeError:
            pass


class Helpers:
    """Small helpers for the tests (a fixture, so test modules need no imports from here)."""

    LEARN_SLICES = LEARN_SLICES
    TINY = TINY

    @staticmethod
    def bbox_rect(
        mask2d: np.ndarray, index: tuple[int, ...] = (), margin: float = 2.0
    ) -> np.ndarray:
        """napari rectangle vertices (leading coords, row, col) around a mask, with a margin."""
        rows = np.flatnonzero(mask2d.any(1))
        cols = np.flatnonzero(mask2d.any(0))
        r0, r1 = rows[0] - margin, rows[-1] + margin
        c0, c1 = cols[0] - margin, cols[-1] + margin
        corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)
        lead = np.tile(np.asarray(index, dtype=float), (4, 1)).reshape(4, len(index))
        return np.concatenate([lead, corners], axis=1)

    @staticmethod
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.astype(bool), b.astype(bool)
        union = (a | b).sum()
        return float((a & b).sum() / union) if union else 1.0


@pytest.fixture
def h() -> type[Helpers]:
    return Helpers
