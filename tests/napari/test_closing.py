"""Closing the viewer (or removing the dock) while a job runs exits cleanly, nothing saved.

Each case runs ``close_while_busy.py`` in its own process: the failure it guards against
(a worker emitting into deleted Qt objects) aborts the whole process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("close_while_busy.py")


@pytest.mark.parametrize("kind", ["load", "embed", "prepare", "learn", "dock"])
def test_closing_while_a_job_runs_exits_cleanly(kind, tmp_path):
    env = dict(os.environ, CASAM_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), kind],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert f"closed while {kind} was running" in out.stdout, log[-3000:]
    for bad in ("Traceback", "Aborted", "has been deleted", "Fatal"):
        assert bad not in log, log[-3000:]
    library = tmp_path / "home" / "library"
    saved = [p.name for p in library.iterdir() if p.is_dir()] if library.exists() else []
    assert saved == [], saved  # a training stopped by the close saved nothing
