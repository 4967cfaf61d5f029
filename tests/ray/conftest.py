"""Fixtures for ratepilot.ray: one local Ray cluster for all its tests, the suite's Redis, simulators.

Ray takes seconds to start (and each dataset execution seconds more to start its actors), so there is one
``ray.init(num_cpus=2)`` for the run of consecutive tests that use it (see ``ray_cluster``). The actors share
the suite's own ``redis-server`` (tests/limits/redis_server.py: started on a free port for the run, its URL
exported in ``RATEPILOT_TEST_REDIS_URL``, which the Ray workers inherit), each test under a key prefix of its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The suite's Redis helper lives beside the limiter tests (not a package): the same module, so the same server.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "limits"))
from redis_server import REDIS_URL, redis_error, scratch_prefix

from ratepilot.sim import SimConfig, Simulator


@pytest.fixture
def ray_cluster() -> Any:
    """The local cluster, ``ray.init(num_cpus=2)``: started by the first test that needs it and kept for the tests
    that follow (session-like), then shut down by :func:`pytest_runtest_teardown` after the last of them, so that
    the rest of a full ``make test`` run does not share the machine's two cores with an idle Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    uses = "ray_cluster" in getattr(item, "fixturenames", ())
    if uses and "ray_cluster" not in getattr(nextitem, "fixturenames", ()):
        import ray

        ray.shutdown()


@pytest.fixture
def store() -> Iterator[str]:
    """A limiter store URL with a prefix of this test's own (limits, stop flags, budget ledgers), deleted after."""
    error = redis_error()
    if error:
        pytest.fail(error)  # never skip: see redis_server.py
    with scratch_prefix("ray:") as prefix:
        yield f"{REDIS_URL}?prefix={prefix}"


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(**config: Any) -> Simulator:
        # Every limit enforced per second too, as the real API documents it may be: a pipeline that bursts is refused.
        config.setdefault("quantum_s", 1.0)
        config.setdefault("responder", "fixed")
        config.setdefault("fixed_text", "ok")
        sim = Simulator(SimConfig(**config)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
