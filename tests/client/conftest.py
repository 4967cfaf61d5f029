"""Fixtures for the client tests: a simulator sharing a FakeClock with the Pilot, so limits never wait."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, Simulator

# Built in two parts so the source holds nothing shaped like a real key; long enough to test redaction.
API_KEY = "sk-" + "test-client-0123456789abcdefSECRET"


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
def make_sim(clock: FakeClock) -> Iterator[Callable[..., Simulator]]:
    """Start simulators on the test's FakeClock: ``make_sim(rpm=3, tpm=10_000, ...)``."""
    started: list[Simulator] = []

    def make(**config: Any) -> Simulator:
        sim = Simulator(SimConfig(**config), clock=clock)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
