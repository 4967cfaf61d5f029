"""Where limiter state lives, chosen by URI: ``memory://``, ``sqlite:///path``, ``redis://host:port/db``.

Every store offers the same five atomic operations on one scope (reserve, adjust, observe, penalize,
load). Memory and SQLite apply :mod:`ratepilot.limits.core` to a decoded state inside a lock or an
``BEGIN IMMEDIATE`` transaction; Redis runs the same arithmetic in one Lua script per operation.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ...clock import Clock, SystemClock
from .base import Store, decode_state, encode_state
from .memory import MemoryStore

__all__ = [
    "DEFAULT_REDIS_PREFIX",
    "MemoryStore",
    "Store",
    "check_store_uri",
    "decode_state",
    "encode_state",
    "open_store",
    "redis_url_and_prefix",
]

DEFAULT_REDIS_PREFIX = "ratepilot:lim:"


def redis_url_and_prefix(uri: str) -> tuple[str, str]:
    """``redis://host:port/db?prefix=p:&socket_timeout=2`` -> (the URL redis-py opens, the key prefix): the
    limiter's Redis store and the shared budget (so a job's limits and budget live under one prefix)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("redis", "rediss", "unix"):
        raise ValueError(f"a Redis URL (redis://host:port/db) is needed here, got {parts.scheme}://...")
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_REDIS_PREFIX])[0]
    rest = "&".join(f"{k}={v[0]}" for k, v in query.items())
    # Rebuilt by hand: urlsplit().geturl() turns unix:///path into unix:/path, which redis-py rejects.
    return uri.split("?", 1)[0] + (f"?{rest}" if rest else ""), prefix


_SCHEMES = ("memory", "sqlite", "redis", "rediss", "unix")


def check_store_uri(uri: str) -> None:
    """Raise ``ValueError`` (the message a person needs) if ``uri`` names no store; opens nothing."""
    if urlsplit(uri).scheme.lower() not in _SCHEMES:
        raise ValueError(f"unknown limiter store {uri!r}: use memory://, sqlite:///path or redis://host:port/db")


def open_store(uri: str = "memory://", clock: Clock | None = None) -> Store:
    """Open the store a URI names.

    * ``memory://`` — this process only (the default);
    * ``sqlite:///abs/path.db`` (or ``sqlite://rel/path.db``) — processes on one host;
    * ``redis://host:port/db[?prefix=...]`` — processes on many hosts. Redis ``TIME`` is the clock, unless
      ``clock`` is not the system clock (tests with a fake clock), in which case the clock's time is sent.
    """
    check_store_uri(uri)
    clock = clock or SystemClock()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore(clock)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = parts.netloc + parts.path if parts.netloc else parts.path
        if not path or path == "/":
            raise ValueError(f"sqlite store URI needs a path: {uri!r} (e.g. sqlite:///tmp/limits.db)")
        return SQLiteStore(path, clock)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        url, prefix = redis_url_and_prefix(uri)
        return RedisStore(url, clock, prefix=prefix)
    raise AssertionError(f"store scheme {scheme!r} not handled")  # check_store_uri above knows no other
