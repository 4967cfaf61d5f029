"""A real simulator (uvicorn) on a FakeClock, its long-running objects configured per test, and SDK clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure, shutdown


@pytest.fixture(scope="module")
def _shared_sim() -> Iterator[tuple[Simulator, FakeClock]]:
    """One server per test module (starting uvicorn per test would dominate the run time)."""
    clock = FakeClock()
    with Simulator(SimConfig(rpm=100_000, tpm=100_000_000), clock=clock) as simulator:
        yield simulator, clock


@pytest.fixture
def sim_clock(_shared_sim: tuple[Simulator, FakeClock]) -> FakeClock:
    return _shared_sim[1]


@pytest.fixture
def sim(_shared_sim: tuple[Simulator, FakeClock]) -> Iterator[Simulator]:
    """The module's simulator, reset: fresh buckets, stats and long-running objects, default knobs."""
    simulator = _shared_sim[0]
    simulator.reset()
    configure(simulator.state, LongrunConfig())
    yield simulator
    shutdown(simulator.state)


@pytest.fixture
def longrun(sim: Simulator) -> Callable[..., LongrunConfig]:
    """``longrun(**knobs)`` configures the simulator's long-running objects for this test."""

    def apply(**knobs: Any) -> LongrunConfig:
        config = LongrunConfig(**knobs)
        configure(sim.state, config)
        return config

    return apply


@pytest.fixture
def client(sim: Simulator) -> Iterator[OpenAI]:
    with OpenAI(base_url=sim.base_url, api_key="sk-test-longrun-0001", max_retries=0) as c:
        yield c
