"""A response cache: a rerun of identical requests costs nothing.

SQLite, one row per successful (HTTP 200) response, keyed by the sha256 of the endpoint (base url + path)
and the request body serialized with sorted keys — so the same request sent to the simulator and to the real
API never share an entry, and key order in the JSONL does not matter. The row keeps the response body (raw
JSON bytes), the server's request id, and what the response cost, so a hit can report the money it saved.
No API key or header is stored. Requests with ``temperature > 0`` are cached too: a rerun returns the answer
already paid for (that is the point); pass ``--no-cache`` to ask again.

Writes are batched (:meth:`ResponseCache.put_many`, one transaction) and the connection is shared between
the event loop thread (lookups) and the flusher thread (inserts) under a lock; WAL mode keeps lookups cheap
while a write transaction is open.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .paths import state_dir
from .sqlite import open_database

__all__ = ["CacheEntry", "CachedResponse", "ResponseCache", "cache_key", "default_cache_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key        BLOB PRIMARY KEY,
    endpoint   TEXT NOT NULL,
    model      TEXT NOT NULL,
    request_id TEXT NOT NULL,
    body       BLOB NOT NULL,
    cost_usd   REAL NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
"""


def default_cache_path() -> Path:
    return state_dir() / "cache.sqlite3"


def cache_key(endpoint: str, body: Mapping[str, Any]) -> bytes:
    """sha256 over the endpoint and the body with sorted keys (key order in the input does not matter)."""
    digest = hashlib.sha256(endpoint.encode())
    digest.update(b"\n")
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class CachedResponse:
    request_id: str
    body: bytes  # the response JSON, as received
    cost_usd: float  # what the original response cost: what this hit saves


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: bytes
    endpoint: str
    model: str
    request_id: str
    body: bytes
    cost_usd: float


class ResponseCache:
    """``get`` by key; ``put_many`` entries in one transaction. Close it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        # NORMAL: a cache row lost to a power cut costs one request, not correctness.
        self._db = open_database(self.path, synchronous="NORMAL", schema=_SCHEMA, check_same_thread=False)
        self._lock = threading.Lock()

    def get(self, key: bytes) -> CachedResponse | None:
        with self._lock:
            row = self._db.execute("SELECT request_id, body, cost_usd FROM responses WHERE key = ?", (key,)).fetchone()
        return CachedResponse(row[0], bytes(row[1]), float(row[2])) if row else None

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        now = time.time()
        rows = [(e.key, e.endpoint, e.model, e.request_id, e.body, e.cost_usd, now) for e in entries]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
