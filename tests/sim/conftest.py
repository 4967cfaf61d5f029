"""Fixtures for the simulator tests: real servers on free ports, official SDK clients, a fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, Simulator

_keys = itertools.count(1)


def new_key() -> str:
    """A fresh fake key: a fresh organization, so tests sharing one server never share buckets."""
    return f"sk-test-{next(_keys):08d}"


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """``make_sim(rpm=3, clock=...)``: a started simulator, stopped at the end of the test."""
    started: list[Simulator] = []

    def make(config: SimConfig | None = None, *, clock: Any = None, **fields: Any) -> Simulator:
        cfg = config or SimConfig(**fields)
        sim = Simulator(cfg, clock=clock if clock is not None else FakeClock())
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[Simulator]:
    """One server with generous limits for content tests (each test uses its own key = its own org)."""
    with Simulator(SimConfig(), clock=FakeClock()) as sim:
        yield sim


@pytest.fixture
def sync_client() -> Iterator[Callable[..., OpenAI]]:
    clients: list[OpenAI] = []

    def make(sim: Simulator, key: str | None = None, **kwargs: Any) -> OpenAI:
        client = OpenAI(base_url=sim.base_url, api_key=key or new_key(), max_retries=0, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
async def async_client() -> Any:
    clients: list[AsyncOpenAI] = []

    def make(sim: Simulator, key: str | None = None, **kwargs: Any) -> AsyncOpenAI:
        client = AsyncOpenAI(base_url=sim.base_url, api_key=key or new_key(), max_retries=0, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
