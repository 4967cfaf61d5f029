"""Building server responses' rate-limit headers for limiter tests."""

from __future__ import annotations

import redis

from ratepilot.protocol.headers import DimensionState, RateLimitHeaders

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


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
