"""A response cache: a rerun of identical requests costs nothing.

SQLite, one row per successful (HTTP 2xx, JSON) response, keyed by the sha256 of the endpoint (base url +
path) and the request body serialized with sorted keys — so the same request sent to the simulator and to the
real API never share an entry, and key order in the JSONL does not matter. The row keeps the response body
(raw JSON bytes), the server's request id, and what the response cost, so a hit can report the money it saved.
No API key or header is stored.

What is cached is the cache's ``policy`` (``ratepilot run --cache``):

* ``always`` (the default): every successful answer, ``temperature > 0`` included — a rerun returns the answer
  already paid for (that is the point of a resumable job);
* ``deterministic``: only requests whose answer asking again would not change (:func:`deterministic`):
  embeddings and moderations, and generations that set ``temperature`` to 0. A generation without
  ``temperature`` runs at the API's default of 1: not cached. Other requests are neither looked up nor stored;
* ``never``: no cache (``--no-cache``).

Hits are counted (and the money they saved) in the file itself, added up over every run that used it, for
``ratepilot cache stats``.

Writes are batched (:meth:`ResponseCache.put_many`, one transaction) and the connection is shared between
the event loop thread (lookups) and the flusher thread (inserts) under a lock; WAL mode keeps lookups cheap
while a write transaction is open.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from .paths import state_dir
from .sqlite import open_database

__all__ = [
    "CACHE_POLICIES",
    "CacheEntry",
    "CacheKey",
    "CachePolicy",
    "CacheStats",
    "CachedResponse",
    "ResponseCache",
    "cache_key",
    "cache_stats",
    "default_cache_path",
    "deterministic",
]

log = logging.getLogger("ratepilot.cache")

CachePolicy = Literal["always", "deterministic", "never"]
CACHE_POLICIES: tuple[CachePolicy, ...] = ("always", "deterministic", "never")

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
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value REAL NOT NULL
) WITHOUT ROWID;
"""

# Endpoints whose answer depends on the input alone (no sampling).
_DETERMINISTIC_ENDPOINTS = ("/embeddings", "/moderations")


def default_cache_path() -> Path:
    return state_dir() / "cache.sqlite3"


def deterministic(endpoint: str, body: Mapping[str, Any]) -> bool:
    """Would asking again give the same answer? Embeddings and moderations: yes. A generation: only when it
    sets ``temperature`` to 0 (without it the API samples at temperature 1). Near-deterministic, in fact: the
    API does not promise identical tokens even then; the rule is that the request asks for no randomness."""
    if endpoint.split("?", 1)[0].rstrip("/").endswith(_DETERMINISTIC_ENDPOINTS):
        return True
    temperature = body.get("temperature")
    return isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0


class CacheKey(bytes):
    """A cache key (a sha256 digest) that remembers whether its request is :func:`deterministic`, so a cache
    whose policy is ``deterministic`` can pass over the others with nothing but the key."""

    deterministic: bool

    def __new__(cls, digest: bytes, deterministic: bool = True) -> CacheKey:
        key = super().__new__(cls, digest)
        key.deterministic = deterministic
        return key


def cache_key(endpoint: str, body: Mapping[str, Any]) -> CacheKey:
    """sha256 over the endpoint and the body with sorted keys (key order in the input does not matter)."""
    digest = hashlib.sha256(endpoint.encode())
    digest.update(b"\n")
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return CacheKey(digest.digest(), deterministic(endpoint, body))


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


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What ``ratepilot cache stats`` shows. Times are Unix seconds; ``hits``/``saved_usd`` add up every run
    that used the file (since it was created or last cleared in full)."""

    path: str
    exists: bool
    entries: int = 0
    size_bytes: int = 0  # the database and its -wal / -shm files
    body_bytes: int = 0  # the cached response bodies alone
    oldest: float | None = None
    newest: float | None = None
    hits: int = 0
    saved_usd: float = 0.0
    last_hit: float | None = None
    models: dict[str, int] = field(default_factory=dict)  # entries per model

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "exists": self.exists,
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            "body_bytes": self.body_bytes,
            "oldest": self.oldest,
            "newest": self.newest,
            "hits": self.hits,
            "saved_usd": round(self.saved_usd, 6),
            "last_hit": self.last_hit,
            "models": dict(self.models),
        }


def _files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path) if p.exists())


def cache_stats(path: str | os.PathLike[str] | None = None) -> CacheStats:
    """The stats of the cache at ``path`` (default: the state dir's), without creating one that is not there."""
    target = Path(path) if path is not None else default_cache_path()
    if not target.exists():
        return CacheStats(str(target), exists=False)
    with ResponseCache(target) as cache:
        return cache.stats()


class ResponseCache:
    """``get`` by key; ``put_many`` entries in one transaction. Close it (or use ``with``).

    ``policy``: which requests it answers and keeps (see the module's docstring); ``never`` keeps nothing.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, policy: CachePolicy = "always") -> None:
        if policy not in CACHE_POLICIES:
            raise ValueError(f"cache policy must be one of {', '.join(CACHE_POLICIES)}, not {policy!r}")
        self.path = Path(path) if path is not None else default_cache_path()
        self.policy: CachePolicy = policy
        # NORMAL: a cache row lost to a power cut costs one request, not correctness.
        self._db = open_database(self.path, synchronous="NORMAL", schema=_SCHEMA, check_same_thread=False)
        self._lock = threading.Lock()
        # Hits since the last flush: counted in memory (a lookup must not write), added to the file on close.
        self._hits = 0
        self._saved_usd = 0.0
        self._last_hit: float | None = None

    def admits(self, key: bytes) -> bool:
        """Does the policy let this request be answered from (and stored in) the cache?"""
        if self.policy == "always":
            return True
        return self.policy == "deterministic" and getattr(key, "deterministic", True)

    def get(self, key: bytes) -> CachedResponse | None:
        if not self.admits(key):
            return None
        with self._lock:
            row = self._db.execute("SELECT request_id, body, cost_usd FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            self._hits += 1
            self._saved_usd += float(row[2])
            self._last_hit = time.time()
        return CachedResponse(row[0], bytes(row[1]), float(row[2]))

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        now = time.time()
        rows = [
            (bytes(e.key), e.endpoint, e.model, e.request_id, e.body, e.cost_usd, now)
            for e in entries
            if self.admits(e.key)
        ]
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

    def stats(self) -> CacheStats:
        self.flush_counters()
        with self._lock:
            entries, body_bytes, oldest, newest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created_at), MAX(created_at) FROM responses"
            ).fetchone()
            models = dict(
                self._db.execute("SELECT model, COUNT(*) FROM responses GROUP BY model ORDER BY 2 DESC").fetchall()
            )
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return CacheStats(
            str(self.path),
            exists=True,
            entries=int(entries),
            size_bytes=_size_on_disk(self.path),
            body_bytes=int(body_bytes),
            oldest=oldest,
            newest=newest,
            hits=int(counters.get("hits", 0)),
            saved_usd=float(counters.get("saved_usd", 0.0)),
            last_hit=counters.get("last_hit"),
            models={str(m): int(n) for m, n in models.items()},
        )

    def count(self, *, older_than_s: float | None = None, now: float | None = None) -> int:
        """Entries in the cache, or only those stored more than ``older_than_s`` seconds before ``now``."""
        if older_than_s is None:
            return len(self)
        cutoff = (time.time() if now is None else now) - older_than_s
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM responses WHERE created_at < ?", (cutoff,)).fetchone()
        return int(row[0])

    def clear(self, *, older_than_s: float | None = None, now: float | None = None) -> int:
        """Delete every entry (and the hit counters), or only entries stored more than ``older_than_s`` seconds
        before ``now``; then give the space back to the disk. Returns how many entries were deleted."""
        with self._lock:
            if older_than_s is None:
                deleted = self._db.execute("DELETE FROM responses").rowcount
                self._db.execute("DELETE FROM counters")
                self._hits, self._saved_usd, self._last_hit = 0, 0.0, None
            else:
                cutoff = (time.time() if now is None else now) - older_than_s
                deleted = self._db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,)).rowcount
            # VACUUM rewrites the file without the freed pages; the checkpoint empties the write-ahead log.
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(deleted)

    def flush_counters(self) -> None:
        """Add the hits counted since the last flush to the file's counters (other processes add theirs)."""
        with self._lock:
            if not self._hits:
                return
            hits, saved, last = self._hits, self._saved_usd, self._last_hit
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    [("hits", hits), ("saved_usd", saved)],
                )
                self._db.execute(
                    "INSERT INTO counters VALUES ('last_hit', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                    (last,),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                # Counting hits is bookkeeping: a full or read-only disk must not fail the job that used the cache.
                log.warning("ratepilot: the response cache's hit counters cannot be written (%s)", exc)
                return
            self._hits, self._saved_usd, self._last_hit = 0, 0.0, None

    def close(self) -> None:
        try:
            self.flush_counters()
        finally:
            with self._lock:
                self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
