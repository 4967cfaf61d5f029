"""Shared fixtures. Time is always injected: tests never sleep for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratepilot.clock import FakeClock


@pytest.fixture(autouse=True)
def _isolated_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's real ~/.ratepilot (state, caches, limiter stores)."""
    home = tmp_path_factory.mktemp("ratepilot-home")
    monkeypatch.setenv("RATEPILOT_HOME", str(home))
    return home


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
