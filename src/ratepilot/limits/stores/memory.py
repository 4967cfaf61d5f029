"""``memory://``: the state of this process's scopes in a dict, behind one lock."""

from __future__ import annotations

import threading

from ...clock import Clock
from .. import core
from ..core import Observation, Refusal, Reserved, ReserveParams, ScopeState, Wait
from .base import decode_state, encode_state

__all__ = ["MemoryStore"]


class MemoryStore:
    uri = "memory://"
    shared = False

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, ScopeState] = {}

    def _get(self, key: str) -> ScopeState:
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = ScopeState()
        return st

    def reserve(self, key: str, costs: tuple[float, ...], params: ReserveParams) -> Reserved | Wait:
        with self._lock:
            return core.reserve(self._get(key), costs, self._clock.now(), params)

    def adjust(
        self, key: str, deltas: tuple[float, ...], charged: tuple[bool, ...], probe_hold: float, probe_lease: float
    ) -> None:
        with self._lock:
            core.adjust(self._get(key), deltas, charged, probe_hold, probe_lease, self._clock.now())

    def observe(self, key: str, obs: Observation) -> None:
        with self._lock:
            core.observe(self._get(key), obs, self._clock.now())

    def penalize(self, key: str, wait: float) -> None:
        with self._lock:
            core.penalize(self._get(key), wait, self._clock.now())

    def refuse(self, key: str, refusal: Refusal) -> None:
        with self._lock:
            core.refuse(self._get(key), refusal, self._clock.now())

    def load(self, key: str) -> tuple[ScopeState | None, float]:
        with self._lock:
            st = self._states.get(key)
            if st is None:
                return None, self._clock.now()
            return decode_state(encode_state(st)), self._clock.now()

    def close(self) -> None:
        pass
