"""Fixtures shared by every engine test."""

import pytest
from casam_testing import isolate_user_dirs


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path, monkeypatch):
    """Every per-user folder (digest memo, default library, cache) lives inside the test."""
    isolate_user_dirs(tmp_path, monkeypatch)
