"""Shared fixtures. Time is always injected: tests never sleep for real."""

from __future__ import annotations

import pytest

from ratepilot.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
