"""Shared fixtures. Time is always injected: tests never sleep for real."""

from __future__ import annotations

from collections.abc import Callable
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


class AlarmClock(FakeClock):
    """An autojumping FakeClock, from 0, that runs ``alarm`` once its time first reaches ``at`` seconds."""

    def __init__(self, at: float, alarm: Callable[[], object]) -> None:
        super().__init__(start=0.0)
        self.at = at
        self.alarm: Callable[[], object] | None = alarm

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        if self.alarm is not None and self.now() >= self.at:
            alarm, self.alarm = self.alarm, None
            alarm()


@pytest.fixture
def alarm_clock() -> type[AlarmClock]:
    """``alarm_clock(at, alarm)``: a clock on which an event happens mid-wait (another thread's doing, say)."""
    return AlarmClock
