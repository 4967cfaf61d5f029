"""Building server responses' rate-limit headers for limiter tests."""

from __future__ import annotations

import asyncio

from redis_server import REDIS_URL, redis_error

from ratepilot.limits import Limiter
from ratepilot.protocol.headers import DimensionState, RateLimitHeaders

__all__ = ["REDIS_URL", "dim", "headers", "quiesce", "require_redis"]


def require_redis() -> None:
    """Fail (never skip) a test that needs Redis when none can be had (see redis_server.py)."""
    import pytest

    error = redis_error()
    if error:
        pytest.fail(error)


def dim(limit: int, remaining: int, window: float = 60.0) -> DimensionState:
    """A header family as a continuously refilling bucket reports it: reset = time until full."""
    return DimensionState(limit, remaining, (limit - remaining) * window / limit)


def headers(
    rpm: tuple[int, int] | None = None,
    tpm: tuple[int, int] | None = None,
    *,
    rpd: tuple[int, int] | None = None,
    tpd: tuple[int, int] | None = None,
) -> RateLimitHeaders:
    req = dim(*rpm) if rpm else (dim(*rpd, window=86_400.0) if rpd else None)
    tok = dim(*tpm) if tpm else (dim(*tpd, window=86_400.0) if tpd else None)
    return RateLimitHeaders(requests=req, tokens=tok)


async def quiesce(lim: Limiter, rounds: int = 3) -> None:
    """Let every task run until it waits on the clock or for its turn. Store calls on an event loop run on the
    limiter's I/O thread: each round waits for the calls handed over so far, then lets the tasks they woke
    take their next step (which may hand over another call; hence several rounds)."""
    for _ in range(rounds):
        await lim.aflush()
        for _ in range(5):
            await asyncio.sleep(0)
