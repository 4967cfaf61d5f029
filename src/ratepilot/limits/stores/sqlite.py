"""``sqlite:///path``: processes on one host share a SQLite file.

One ``BEGIN IMMEDIATE`` transaction per operation (the write lock is taken up front, so two processes
never both read the old state); WAL so readers never block; ``synchronous=NORMAL`` because the state is
an estimate that the next response corrects, not a ledger (a power cut may lose the last commits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ...clock import Clock
from ...sqlite import open_database
from .. import core
from ..core import Observation, Refusal, Reserved, ReserveParams, ScopeState, Wait
from .base import decode_state, encode_state

__all__ = ["SQLiteStore"]

T = TypeVar("T")


class SQLiteStore:
    shared = True

    def __init__(self, path: str, clock: Clock) -> None:
        self.path = Path(path)
        self.uri = f"sqlite://{self.path}"
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_database(
            self.path,
            synchronous="NORMAL",
            schema="CREATE TABLE IF NOT EXISTS ratepilot_limits (key TEXT PRIMARY KEY, state TEXT NOT NULL);",
            check_same_thread=False,
        )

    def _apply(self, key: str, fn: Callable[[ScopeState, float], T]) -> T:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT state FROM ratepilot_limits WHERE key = ?", (key,)).fetchone()
                st = decode_state(row[0]) if row else ScopeState()
                result = fn(st, self._clock.now())
                db.execute(
                    "INSERT INTO ratepilot_limits (key, state) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET state = excluded.state",
                    (key, encode_state(st)),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return result

    def reserve(self, key: str, costs: tuple[float, ...], params: ReserveParams) -> Reserved | Wait:
        return self._apply(key, lambda st, now: core.reserve(st, costs, now, params))

    def adjust(
        self, key: str, deltas: tuple[float, ...], charged: tuple[bool, ...], probe_hold: float, probe_lease: float
    ) -> None:
        self._apply(key, lambda st, now: core.adjust(st, deltas, charged, probe_hold, probe_lease, now))

    def observe(self, key: str, obs: Observation) -> None:
        self._apply(key, lambda st, now: core.observe(st, obs, now))

    def penalize(self, key: str, wait: float) -> None:
        self._apply(key, lambda st, now: core.penalize(st, wait, now))

    def refuse(self, key: str, refusal: Refusal) -> None:
        self._apply(key, lambda st, now: core.refuse(st, refusal, now))

    def load(self, key: str) -> tuple[ScopeState | None, float]:
        with self._lock:
            row = self._db.execute("SELECT state FROM ratepilot_limits WHERE key = ?", (key,)).fetchone()
            return (decode_state(row[0]) if row else None), self._clock.now()

    def close(self) -> None:
        with self._lock:
            self._db.close()
