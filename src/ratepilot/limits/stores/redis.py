"""``redis://host:port/db``: processes on many hosts share one Redis.

One Lua script per atomic operation (``limits/lua/<op>.lua`` after the shared ``common.lua`` prelude), so
every operation is one round trip and all dimensions are reserved atomically. The scripts read Redis
``TIME`` so the hosts' clocks never matter; only when the limiter runs on an injected (fake) clock is that
clock's time sent instead, which is what lets one test body drive all stores with a fake clock.

Each thread talks to Redis over its own connection, held for the store's life, and sends ``EVALSHA``
directly on it. redis-py's pooled ``execute_command`` checks a connection out and back in and runs its
retry wrapper on every call; on loopback that bookkeeping cost as much as the round trip itself
(``bench/limiter.py``), and a limiter calls the store twice per request.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import weakref
from importlib import resources
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ...clock import Clock, SystemClock
from ..core import Observation, Reserved, ReserveParams, ScopeState, Wait
from ..types import N_DIMS
from .base import decode_state

__all__ = ["RedisStore"]

TTL_MS = 2 * 86_400 * 1000  # a scope idle for two days (longer than the daily window) is forgotten
_OPERATIONS = ("reserve", "adjust", "observe", "penalize", "load")


def _script_source(name: str) -> str:
    lua = resources.files("ratepilot.limits") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


_RESERVED = range(3 + 3 * N_DIMS)  # reply length of a granted reservation (a refusal is 3 numbers)
_REPLY = struct.Struct(f"<{len(_RESERVED)}d")


def _padded(reply: bytes) -> bytes:
    return reply.ljust(_REPLY.size, b"\0")


class _Script:
    """One operation's Lua source and its SHA1 (what ``EVALSHA`` names; loaded on the first NOSCRIPT)."""

    def __init__(self, name: str) -> None:
        self.source = _script_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class RedisStore:
    shared = True

    def __init__(self, url: str, clock: Clock, *, prefix: str = "ratepilot:lim:") -> None:
        self.uri = url
        self.prefix = prefix
        self._clock = clock
        # The system clock means "real time": use Redis TIME. Any other clock is injected on purpose.
        self._send_now = not isinstance(clock, SystemClock)
        self._redis: redis.Redis = redis.Redis.from_url(url)  # parses the URL (unix, TLS, auth) into a pool
        self._scripts = {name: _Script(name) for name in _OPERATIONS}
        self._local = threading.local()
        self._mu = threading.Lock()
        # Every thread's connection, to close them all. Weak: the connection of a thread that has ended goes
        # with its thread-local (redis-py disconnects a connection when it is collected).
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # redis-py's Connection (untyped)

    # -- the one round trip ---------------------------------------------------------------------------------------

    def _connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        # A forked child must not share its parent's socket: replies would be read by the wrong process.
        if conn is None or local.pid != os.getpid():
            pool = self._redis.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            local.conn, local.pid = conn, os.getpid()
            with self._mu:
                self._connections.add(conn)
        return conn

    def _eval(self, name: str, key: str, packed: bytes) -> Any:
        script = self._scripts[name]
        conn = self._connection()
        now = repr(float(self._clock.now())) if self._send_now else ""
        reconnected = reloaded = False
        while True:
            try:
                conn.send_command("EVALSHA", script.sha, 1, self.prefix + key, now, TTL_MS, packed)
                return conn.read_response()
            except NoScriptError:
                # First use on this server (or after SCRIPT FLUSH / a restart): load it, then run it. Once: a
                # proxy that keeps forgetting scripts must surface as an error, not a loop.
                if reloaded:
                    raise
                reloaded = True
                conn.send_command("SCRIPT", "LOAD", script.source)
                conn.read_response()
            except RedisConnectionError:
                # The connection was closed or reset (a restarted server, an idle timeout); redis-py has
                # disconnected it and the next send reconnects. Retried once: a dead server must surface as an
                # error. A timeout is not retried: the script may be running, and running an adjust twice
                # would refund twice. (A reservation whose reply is lost stays charged until its window
                # passes: the safe direction for a limiter.)
                if reconnected:
                    raise
                reconnected = True

    def _call(self, name: str, key: str, numbers: list[float]) -> Any:
        return self._eval(name, key, struct.pack(f"<{len(numbers)}d", *numbers))

    # -- the store operations --------------------------------------------------------------------------------------

    def reserve(self, key: str, costs: tuple[float, ...], params: ReserveParams) -> Reserved | Wait:
        numbers = [params.probe_timeout, params.blind_after, params.headroom, params.foreign_horizon]
        out = _REPLY.unpack(_padded(self._call("reserve", key, [*numbers, *costs, *params.ceiling])))
        if out[0] == 0:
            return Wait(out[1], probe=out[2] > 0)
        n = N_DIMS
        return Reserved(
            seq=int(out[1]),
            used=out[3 : 3 + n],
            adj=out[3 + n : 3 + 2 * n],
            charged=tuple(x == 1 for x in out[3 + 2 * n : 3 + 3 * n]),
            probe=out[2] > 0,
            lease=out[2],
        )

    def adjust(
        self, key: str, deltas: tuple[float, ...], charged: tuple[bool, ...], probe_hold: float, probe_lease: float
    ) -> None:
        self._call("adjust", key, [probe_hold, *deltas, *(float(c) for c in charged), probe_lease])

    def observe(self, key: str, obs: Observation) -> None:
        numbers = [obs.age, obs.ref_seq, obs.damping, *obs.ref_used, *obs.ref_adj, len(obs.dims)]
        for o in obs.dims:
            numbers += [o.dim, o.limit, o.server_limit, o.used]
        self._call("observe", key, numbers)

    def penalize(self, key: str, wait: float) -> None:
        self._call("penalize", key, [wait])

    def load(self, key: str) -> tuple[ScopeState | None, float]:
        raw, now = self._eval("load", key, b"")
        return (decode_state(raw.decode()) if raw else None), float(now)

    def close(self) -> None:
        with self._mu:
            connections, self._connections = list(self._connections), weakref.WeakSet()
            self._local = threading.local()  # a later call opens (and tracks) a new connection
        for conn in connections:
            conn.disconnect()
        self._redis.close()
