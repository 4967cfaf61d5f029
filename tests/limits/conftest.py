"""Fixtures: one limiter test body runs against every store (memory, SQLite, real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from limits_helpers import REDIS_URL, require_redis
from redis_server import scratch_prefix


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix, deleted afterwards (never FLUSHALL: the server is shared)."""
    require_redis()
    with scratch_prefix() as prefix:
        yield prefix


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.db'}"
    prefix = request.getfixturevalue("redis_prefix")
    return f"{REDIS_URL}?prefix={prefix}"
