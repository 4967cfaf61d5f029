"""``redis://host:port/db``: processes on many hosts share one Redis.

One Lua script per atomic operation (``limits/lua/<op>.lua`` after the shared ``common.lua`` prelude), so
every operation is one round trip and all dimensions are reserved atomically. The scripts read Redis
``TIME`` so the hosts' clocks never matter; only when the limiter runs on an injected (fake) clock is that
clock's time sent instead, which is what lets one test body drive all stores with a fake clock.
"""

from __future__ import annotations

import struct
from importlib import resources
from typing import Any

import redis

from ...clock import Clock, SystemClock
from ..core import Observation, Reserved, ReserveParams, ScopeState, Wait
from ..types import N_DIMS
from .base import decode_state

__all__ = ["RedisStore"]

TTL_MS = 2 * 86_400 * 1000  # a scope idle for two days (longer than the daily window) is forgotten


def _script_source(name: str) -> str:
    lua = resources.files("ratepilot.limits") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


_RESERVED = range(3 + 3 * N_DIMS)  # reply length of a granted reservation (a refusal is 3 numbers)


def _padded(reply: bytes) -> bytes:
    return reply.ljust(8 * len(_RESERVED), b"\0")


class RedisStore:
    shared = True

    def __init__(self, url: str, clock: Clock, *, prefix: str = "ratepilot:lim:") -> None:
        self.uri = url
        self.prefix = prefix
        self._clock = clock
        # The system clock means "real time": use Redis TIME. Any other clock is injected on purpose.
        self._send_now = not isinstance(clock, SystemClock)
        self._redis: redis.Redis = redis.Redis.from_url(url)
        self._scripts = {
            name: self._redis.register_script(_script_source(name))
            for name in ("reserve", "adjust", "observe", "penalize", "load")
        }

    def _now_arg(self) -> str:
        return repr(float(self._clock.now())) if self._send_now else ""

    def _call(self, name: str, key: str, numbers: list[float]) -> Any:
        packed = struct.pack(f"<{len(numbers)}d", *numbers)
        return self._scripts[name](keys=[self.prefix + key], args=[self._now_arg(), TTL_MS, packed])

    def reserve(self, key: str, costs: tuple[float, ...], params: ReserveParams) -> Reserved | Wait:
        numbers = [params.probe_timeout, params.blind_after, params.headroom, params.foreign_horizon]
        out = struct.unpack_from(
            f"<{len(_RESERVED)}d", _padded(self._call("reserve", key, [*numbers, *costs, *params.ceiling]))
        )
        if out[0] == 0:
            return Wait(out[1], probe=out[2] == 1)
        n = N_DIMS
        return Reserved(
            seq=int(out[1]),
            used=out[3 : 3 + n],
            adj=out[3 + n : 3 + 2 * n],
            charged=tuple(x == 1 for x in out[3 + 2 * n : 3 + 3 * n]),
            probe=out[2] == 1,
        )

    def adjust(self, key: str, deltas: tuple[float, ...], charged: tuple[bool, ...], release_probe: bool) -> None:
        self._call("adjust", key, [float(release_probe), *deltas, *(float(c) for c in charged)])

    def observe(self, key: str, obs: Observation) -> None:
        numbers = [obs.age, obs.ref_seq, obs.damping, *obs.ref_used, *obs.ref_adj, len(obs.dims)]
        for o in obs.dims:
            numbers += [o.dim, o.limit, o.server_limit, o.used]
        self._call("observe", key, numbers)

    def penalize(self, key: str, wait: float) -> None:
        self._call("penalize", key, [wait])

    def load(self, key: str) -> tuple[ScopeState | None, float]:
        raw, now = self._scripts["load"](keys=[self.prefix + key], args=[self._now_arg(), TTL_MS, b""])
        return (decode_state(raw.decode()) if raw else None), float(now)

    def close(self) -> None:
        self._redis.close()
