"""The embedded SQLite state of Batch jobs: jobs, shards, the intent log and the per-line results index.

Why SQLite: a batch job lives for hours and must survive ``kill -9`` at any point. Every action that has an
effect on the server (upload a file, create a batch) is preceded by a committed *intent* row
(``synchronous=FULL``, so the commit is on disk before the call is made); after a crash the intent tells the
driver which server-side object may exist and must be reconciled instead of created again.

Each job has its own ``lines_<job id>`` table, the results index: one row per input request (input order
``idx`` as the rowid, ``custom_id``, current shard, state, attempts, and where its result line sits in a
downloaded file, as file number + byte offset + length). Collect writes results in input order by walking
this index, so memory stays bounded however large the job is. Rows are appended in input order while
planning and the secondary indexes (custom_id, shard) are built once at the end (:meth:`BatchState.index_lines`),
which is several times faster than maintaining them row by row for a million-line job.

RUN keeps its response cache elsewhere (``ratepilot.cache``); this module only holds batch state.

Over 500 lines, one concept: the pipeline's SQLite schema and every query on it, in one place.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..sqlite import open_database

__all__ = [
    "DEFAULT_DB_NAME",
    "BatchState",
    "JobRecord",
    "LineRow",
    "LineState",
    "ShardRecord",
    "ShardState",
]

DEFAULT_DB_NAME = "batch.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    input_path    TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    nonce         TEXT NOT NULL DEFAULT '',
    url           TEXT NOT NULL DEFAULT '',
    total         INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,
    config        TEXT NOT NULL DEFAULT '{}',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    key_id        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS shards (
    job            INTEGER NOT NULL,
    shard          INTEGER NOT NULL,
    model          TEXT NOT NULL,
    url            TEXT NOT NULL,
    round          INTEGER NOT NULL,
    path           TEXT NOT NULL,
    n_requests     INTEGER NOT NULL,
    n_bytes        INTEGER NOT NULL,
    est_tokens     INTEGER NOT NULL,
    state          TEXT NOT NULL,
    submit_no      INTEGER NOT NULL DEFAULT 0,
    intent_at      REAL,
    file_created_at INTEGER,
    file_id        TEXT,
    batch_id       TEXT,
    batch_status   TEXT,
    output_file_id TEXT,
    error_file_id  TEXT,
    completed      INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    total          INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_usd       REAL NOT NULL DEFAULT 0,
    error_code     TEXT,
    error_message  TEXT,
    deferrals      INTEGER NOT NULL DEFAULT 0,
    in_progress_at REAL,
    updated_at     REAL NOT NULL,
    PRIMARY KEY (job, shard)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    id    INTEGER PRIMARY KEY,
    job   INTEGER NOT NULL,
    path  TEXT NOT NULL,
    kind  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,
    job    INTEGER NOT NULL,
    shard  INTEGER,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at     REAL NOT NULL
);
-- The creations of the last hour are counted before every batch create (BatchConfig.max_creations_per_hour).
CREATE INDEX IF NOT EXISTS events_kind_at ON events (kind, at);
CREATE TABLE IF NOT EXISTS token_limits (
    model TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL,
    learned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS key_token_limits (
    key_id     TEXT NOT NULL,
    model      TEXT NOT NULL,
    tokens     INTEGER NOT NULL,
    learned_at REAL NOT NULL,
    PRIMARY KEY (key_id, model)
) WITHOUT ROWID;
"""
# ``token_limits`` (by model only) is what databases written before keys were recorded hold: still read, as a
# fallback for every key (cautious: a limit is never higher than learned), never written any more.


class ShardState(enum.StrEnum):
    """Where one shard (one batch submission of a set of lines) stands. Intent states end in ``-ing``."""

    PLANNED = "planned"  # shard file written locally
    UPLOADING = "uploading"  # intent: a file upload may exist on the server
    UPLOADED = "uploaded"  # file_id known; waiting for enqueued-token capacity
    CREATING = "creating"  # intent: a batch with our metadata may exist on the server
    SUBMITTED = "submitted"  # batch_id known; tracking until terminal
    FINISHED = "finished"  # batch terminal; output/error files not yet indexed
    COLLECTED = "collected"  # every line of the shard has a result (or is queued for retry)


class LineState(enum.IntEnum):
    PENDING = 0  # in a shard that has not been collected
    DONE = 1  # a 2xx result line is indexed
    FAILED = 2  # a final (non-retryable, or out of attempts) error line is indexed
    RETRY = 3  # failed retryably; goes into the next round's shard


@dataclass(slots=True)
class JobRecord:
    name: str
    input_path: str
    fingerprint: str
    nonce: str = ""
    url: str = ""
    total: int = 0
    state: str = "planning"
    config: str = "{}"
    created_at: float = 0.0
    updated_at: float = 0.0
    key_id: str = ""
    """:func:`ratepilot.limits.key_id_for` of the API key the job was submitted with ('' = unknown). The
    enqueued-token limit is per organization, which is what a key stands for here."""
    id: int = 0


@dataclass(slots=True)
class ShardRecord:
    job: int
    shard: int
    model: str
    url: str
    round: int
    path: str
    n_requests: int
    n_bytes: int
    est_tokens: int
    state: str = ShardState.PLANNED.value
    submit_no: int = 0
    intent_at: float | None = None
    file_created_at: int | None = None
    file_id: str | None = None
    batch_id: str | None = None
    batch_status: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    total: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    deferrals: int = 0
    in_progress_at: float | None = None
    updated_at: float = field(default=0.0)


_LINES_TABLE = """
CREATE TABLE IF NOT EXISTS {t} (
    idx       INTEGER PRIMARY KEY,
    custom_id TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    state     INTEGER NOT NULL DEFAULT 0,
    attempts  INTEGER NOT NULL DEFAULT 1,
    file      INTEGER,
    off       INTEGER,
    len       INTEGER,
    code      TEXT
)
"""


def _t(job: JobRecord) -> str:
    """The job's lines table (an integer id: safe to format into SQL)."""
    return f"lines_{int(job.id)}"


LineRow = tuple[int, str, int, int | None, int | None, int | None, str | None, int]
"""``(idx, custom_id, state, file, off, len, code)``."""

_SHARD_COLUMNS = tuple(f.name for f in fields(ShardRecord))
_JOB_COLUMNS = tuple(f.name for f in fields(JobRecord))


class BatchState:
    """One SQLite database (WAL mode) holding the state of every batch job of a state directory.

    Safe to open from several processes: SQLite serializes writers, and ``busy_timeout`` waits for the lock.
    """

    def __init__(self, path: str | Path, *, wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        # Every timestamp recorded here (updated_at, the event log...) is on this clock: the runner passes
        # its own, so a shard's last-poll time and the server's in_progress_at share one time base (ETA).
        self._wall = wall
        self._db = open_database(
            self.path,
            # FULL: a committed intent is on disk before the server call it announces.
            synchronous="FULL",
            # 32 MiB of page cache (the default 2 MiB thrashes when a million-line index is updated in random
            # custom_id order); well inside the 300 MB budget of a million-request job.
            pragmas=("cache_size=-32768",),
            schema=_SCHEMA,
        )
        self._migrate()

    def _migrate(self) -> None:
        """Add what newer versions record to a database an older version created (additive only)."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        if "key_id" not in columns:
            with self._tx():
                if "key_id" not in {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}:  # another process
                    self._db.execute("ALTER TABLE jobs ADD COLUMN key_id TEXT NOT NULL DEFAULT ''")

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> BatchState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    # -- jobs ------------------------------------------------------------------------------------------------
    def create_job(self, job: JobRecord) -> JobRecord:
        now = self._wall()
        job.created_at = job.created_at or now
        job.updated_at = now
        cols = [c for c in _JOB_COLUMNS if c != "id"]
        with self._tx():
            cur = self._db.execute(
                f"INSERT INTO jobs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                [getattr(job, c) for c in cols],
            )
            job.id = int(cur.lastrowid or 0)
            self._db.execute(_LINES_TABLE.format(t=_t(job)))
        return job

    def get_job(self, name: str) -> JobRecord | None:
        row = self._db.execute(f"SELECT {','.join(_JOB_COLUMNS)} FROM jobs WHERE name = ?", (name,)).fetchone()
        return JobRecord(*row) if row else None

    def get_job_by_id(self, job_id: int) -> JobRecord | None:
        row = self._db.execute(f"SELECT {','.join(_JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord(*row) if row else None

    def list_jobs(self) -> list[JobRecord]:
        rows = self._db.execute(f"SELECT {','.join(_JOB_COLUMNS)} FROM jobs ORDER BY created_at, id").fetchall()
        return [JobRecord(*r) for r in rows]

    def update_job(self, job: JobRecord, **changes: Any) -> None:
        changes["updated_at"] = self._wall()
        for key, value in changes.items():
            setattr(job, key, value)
        sets = ",".join(f"{k} = ?" for k in changes)
        with self._tx():
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*changes.values(), job.id])

    def delete_job(self, job: JobRecord) -> None:
        """Forget a job entirely (its plan, lines, files index and log)."""
        with self._tx():
            for table in ("shards", "files", "events"):
                self._db.execute(f"DELETE FROM {table} WHERE job = ?", (job.id,))
            self._db.execute(f"DROP TABLE IF EXISTS {_t(job)}")
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))

    def clear_plan(self, job: JobRecord) -> None:
        """Drop a half-written plan (a crash while planning; nothing had been uploaded yet)."""
        with self._tx():
            for table in ("shards", "files"):
                self._db.execute(f"DELETE FROM {table} WHERE job = ?", (job.id,))
            self._db.execute(f"DROP TABLE IF EXISTS {_t(job)}")
            self._db.execute(_LINES_TABLE.format(t=_t(job)))

    # -- shards ----------------------------------------------------------------------------------------------
    def add_shard(self, shard: ShardRecord) -> None:
        shard.updated_at = self._wall()
        with self._tx():
            self._db.execute(
                f"INSERT INTO shards ({','.join(_SHARD_COLUMNS)}) VALUES ({','.join('?' * len(_SHARD_COLUMNS))})",
                [getattr(shard, c) for c in _SHARD_COLUMNS],
            )

    def shards(self, job: JobRecord) -> list[ShardRecord]:
        rows = self._db.execute(
            f"SELECT {','.join(_SHARD_COLUMNS)} FROM shards WHERE job = ? ORDER BY shard", (job.id,)
        ).fetchall()
        return [ShardRecord(*r) for r in rows]

    # Jobs of the same organization: the same key, or an unknown one on either side (counted, to be safe).
    _SAME_KEY = "job IN (SELECT id FROM jobs WHERE ? = '' OR key_id = '' OR key_id = ?)"

    def in_flight_tokens(self, model: str, *, key_id: str = "", exclude_job: int | None = None) -> int:
        """Estimated enqueued tokens of the batches for ``model`` that the server may still count (shards
        being created or submitted) of every job submitted with ``key_id``: the enqueued-token limit is per
        organization and model, so those jobs share it. ``exclude_job``: leave that job's own shards out."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(est_tokens), 0) FROM shards WHERE model = ? AND state IN (?, ?) AND job != ? "
            f"AND {self._SAME_KEY}",
            (
                model,
                ShardState.CREATING.value,
                ShardState.SUBMITTED.value,
                -1 if exclude_job is None else exclude_job,
                key_id,
                key_id,
            ),
        ).fetchone()
        return int(row[0])

    def submitted_shards(self, model: str, *, key_id: str = "", exclude_job: int | None = None) -> list[ShardRecord]:
        """Submitted shards (with a batch id) for ``model`` of every job (but ``exclude_job``) of ``key_id``."""
        rows = self._db.execute(
            f"SELECT {','.join(_SHARD_COLUMNS)} FROM shards WHERE model = ? AND state = ? AND job != ? "
            f"AND batch_id IS NOT NULL AND {self._SAME_KEY} ORDER BY job, shard",
            (model, ShardState.SUBMITTED.value, -1 if exclude_job is None else exclude_job, key_id, key_id),
        ).fetchall()
        return [ShardRecord(*r) for r in rows]

    def next_shard_number(self, job: JobRecord) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(shard), -1) + 1 FROM shards WHERE job = ?", (job.id,)).fetchone()
        return int(row[0])

    def update_shard(self, shard: ShardRecord, *, event: str | None = None, detail: str = "", **changes: Any) -> None:
        """Apply ``changes`` to a shard (and optionally append to the intent log) in one durable commit."""
        changes["updated_at"] = self._wall()
        for key, value in changes.items():
            setattr(shard, key, value)
        sets = ",".join(f"{k} = ?" for k in changes)
        with self._tx():
            self._db.execute(
                f"UPDATE shards SET {sets} WHERE job = ? AND shard = ?", [*changes.values(), shard.job, shard.shard]
            )
            if event:
                self._log(shard.job, shard.shard, event, detail)

    # -- intent / event log ----------------------------------------------------------------------------------
    def _log(self, job: int, shard: int | None, kind: str, detail: str) -> None:
        self._db.execute(
            "INSERT INTO events (job, shard, kind, detail, at) VALUES (?, ?, ?, ?, ?)",
            (job, shard, kind, detail, self._wall()),
        )

    def log(self, job: JobRecord, kind: str, detail: str = "", shard: int | None = None) -> None:
        with self._tx():
            self._log(job.id, shard, kind, detail)

    def event_times(self, kind: str, since: float) -> list[float]:
        """When events of ``kind`` happened (every job) since wall time ``since``, oldest first."""
        rows = self._db.execute("SELECT at FROM events WHERE kind = ? AND at >= ? ORDER BY at", (kind, since))
        return [float(r[0]) for r in rows]

    def events(self, job: JobRecord) -> list[tuple[int | None, str, str]]:
        rows = self._db.execute("SELECT shard, kind, detail FROM events WHERE job = ? ORDER BY id", (job.id,))
        return [(r[0], r[1], r[2]) for r in rows]

    # -- lines (the results index) ---------------------------------------------------------------------------
    def add_lines(self, job: JobRecord, rows: Iterable[tuple[int, str, int]]) -> None:
        """Append ``(idx, custom_id, shard)`` rows in increasing ``idx`` (the input line number); the caller
        wraps many calls in :meth:`bulk`."""
        self._db.executemany(f"INSERT INTO {_t(job)} (idx, custom_id, shard) VALUES (?, ?, ?)", rows)

    def index_lines(self, job: JobRecord, *, report: int = 20) -> tuple[list[tuple[str, int, int]], int]:
        """Build the secondary indexes once the plan is written.

        Returns ``([(custom_id, first idx, duplicate idx), ...], number of duplicates)``: the unique index
        refuses duplicate custom_ids, and then the first ``report`` of them are looked up for the error
        message (no index is created; the plan is invalid).
        """
        t = _t(job)
        try:
            self._db.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_cid ON {t} (custom_id)")
        except sqlite3.IntegrityError:
            # Bounded whatever the number of duplicates: SQLite sorts on disk past its cache, and only the
            # first `report` duplicates (in line order) come back, each with its id's first line.
            found = [
                (str(cid), int(first), int(idx))
                for cid, first, idx in self._db.execute(
                    f"SELECT custom_id, first, idx FROM (SELECT custom_id, idx, "
                    "ROW_NUMBER() OVER (PARTITION BY custom_id ORDER BY idx) AS n, "
                    f"MIN(idx) OVER (PARTITION BY custom_id) AS first FROM {t}) "
                    "WHERE n > 1 ORDER BY idx LIMIT ?",
                    (report,),
                )
            ]
            row = self._db.execute(f"SELECT COUNT(*) - COUNT(DISTINCT custom_id) FROM {t}").fetchone()
            return found, int(row[0])
        # (shard) only: state changes on every result, and keeping it out of the index keeps those updates cheap.
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {t}_shard ON {t} (shard)")
        return [], 0

    def bulk(self) -> _Transaction:
        """One transaction around many statements (planning, indexing a downloaded file)."""
        return self._tx()

    def set_results(
        self,
        job: JobRecord,
        shard: int,
        rows: Iterable[tuple[int, int, int, int, str | None, str]],
        *,
        from_state: LineState = LineState.PENDING,
    ) -> int:
        """Record results ``(state, file, off, len, code, custom_id)`` of lines of ``shard`` in ``from_state``.

        Returns the number of lines updated. Only lines still in ``from_state`` and still assigned to this
        shard are touched: a stray or repeated result line can never overwrite an answer already recorded, so
        every request is answered exactly once.
        """
        cur = self._db.executemany(
            f"UPDATE {_t(job)} SET state = ?, file = ?, off = ?, len = ?, code = ? "
            "WHERE custom_id = ? AND shard = ? AND state = ?",
            ((st, f, o, n, code, cid, shard, int(from_state)) for st, f, o, n, code, cid in rows),
        )
        return cur.rowcount

    def out_of_attempts(self, job: JobRecord, shard: int, max_attempts: int) -> set[str]:
        """custom_ids of one shard that failed retryably and have no submission left."""
        rows = self._db.execute(
            f"SELECT custom_id FROM {_t(job)} WHERE shard = ? AND state = ? AND attempts >= ?",
            (shard, int(LineState.RETRY), max_attempts),
        )
        return {r[0] for r in rows}

    def pending_in_shard(self, job: JobRecord, shard: int) -> int:
        row = self._db.execute(f"SELECT COUNT(*) FROM {_t(job)} WHERE shard = ? AND state = 0", (shard,)).fetchone()
        return int(row[0])

    def mark_unanswered(
        self, job: JobRecord, shard: int, state: LineState, code: str, *, refund_attempt: bool = False
    ) -> int:
        """Lines of a terminal shard that got no result line at all (cancelled, expired without a line...).

        ``refund_attempt``: the batch was refused before any line ran (too big for the server), so its
        submission does not count against the lines' attempts (the retry round adds one back).
        """
        refund = ", attempts = attempts - 1" if refund_attempt else ""
        with self._tx():
            cur = self._db.execute(
                f"UPDATE {_t(job)} SET state = ?, code = ?, file = NULL, off = NULL, len = NULL{refund} "
                "WHERE shard = ? AND state = 0",
                (int(state), code, shard),
            )
        return cur.rowcount

    def custom_ids_in_state(self, job: JobRecord, shard: int, state: LineState) -> set[str]:
        """custom_ids of one shard in a state (bounded: a shard holds at most 50,000 lines)."""
        rows = self._db.execute(f"SELECT custom_id FROM {_t(job)} WHERE shard = ? AND state = ?", (shard, int(state)))
        return {r[0] for r in rows}

    def shards_with_state(self, job: JobRecord, state: LineState) -> list[int]:
        rows = self._db.execute(f"SELECT DISTINCT shard FROM {_t(job)} WHERE state = ? ORDER BY shard", (int(state),))
        return [int(r[0]) for r in rows]

    def move_lines(self, job: JobRecord, moves: Iterable[tuple[int, str]], *, from_state: LineState) -> None:
        """Reassign retried lines ``(new_shard, custom_id)`` and count the attempt; they become pending again."""
        self._db.executemany(
            f"UPDATE {_t(job)} SET shard = ?, state = 0, attempts = attempts + 1, file = NULL, off = NULL, "
            "len = NULL WHERE custom_id = ? AND state = ?",
            ((s, cid, int(from_state)) for s, cid in moves),
        )

    def finalize_retries(self, job: JobRecord, max_attempts: int) -> int:
        """Retryable failures that used up their attempts become final failures (their error line stays)."""
        with self._tx():
            cur = self._db.execute(
                f"UPDATE {_t(job)} SET state = ? WHERE state = ? AND attempts >= ?",
                (int(LineState.FAILED), int(LineState.RETRY), max_attempts),
            )
        return cur.rowcount

    def line_counts(self, job: JobRecord) -> dict[LineState, int]:
        counts = dict.fromkeys(LineState, 0)
        for state, n in self._db.execute(f"SELECT state, COUNT(*) FROM {_t(job)} GROUP BY state"):
            counts[LineState(state)] = int(n)
        return counts

    def line_codes(self, job: JobRecord, state: LineState) -> dict[str, int]:
        rows = self._db.execute(
            f"SELECT COALESCE(code, ''), COUNT(*) FROM {_t(job)} WHERE state = ? GROUP BY code", (int(state),)
        )
        return {r[0]: int(r[1]) for r in rows}

    def iter_lines(self, job: JobRecord) -> Iterator[LineRow]:
        """``(idx, custom_id, state, file, off, len, code, shard)`` in input order, streamed from SQLite."""
        cur = self._db.execute(f"SELECT idx, custom_id, state, file, off, len, code, shard FROM {_t(job)} ORDER BY idx")
        while True:
            chunk = cur.fetchmany(4096)
            if not chunk:
                return
            yield from chunk

    # -- downloaded files ------------------------------------------------------------------------------------
    def add_file(self, job: JobRecord, path: str, kind: str) -> int:
        """The number of a downloaded file (registered once per path)."""
        with self._tx():
            row = self._db.execute("SELECT id FROM files WHERE job = ? AND path = ?", (job.id, path)).fetchone()
            if row:
                return int(row[0])
            cur = self._db.execute("INSERT INTO files (job, path, kind) VALUES (?, ?, ?)", (job.id, path, kind))
        return int(cur.lastrowid or 0)

    def file_paths(self, job: JobRecord) -> dict[int, str]:
        return {int(r[0]): r[1] for r in self._db.execute("SELECT id, path FROM files WHERE job = ?", (job.id,))}

    # -- learned enqueued-token limits -----------------------------------------------------------------------
    def token_limit(self, model: str, key_id: str = "") -> int | None:
        """The limit learned for ``model`` with ``key_id`` (else one learned without a known key)."""
        row = self._db.execute(
            "SELECT tokens FROM key_token_limits WHERE key_id = ? AND model = ?", (key_id, model)
        ).fetchone()
        if row is None and key_id:
            row = self._db.execute(
                "SELECT tokens FROM key_token_limits WHERE key_id = '' AND model = ?", (model,)
            ).fetchone()
        if row is None:
            row = self._db.execute("SELECT tokens FROM token_limits WHERE model = ?", (model,)).fetchone()
        return int(row[0]) if row else None

    def set_token_limit(self, model: str, tokens: int, key_id: str = "") -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO key_token_limits (key_id, model, tokens, learned_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key_id, model) DO UPDATE SET tokens = excluded.tokens, learned_at = excluded.learned_at",
                (key_id, model, tokens, self._wall()),
            )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error); re-entrant within one connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> _Transaction:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._outer:
            return
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
