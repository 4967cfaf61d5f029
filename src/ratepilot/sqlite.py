"""Opening ratepilot's SQLite files (batch state, response cache, limiter state): one way, WAL mode.

Each file may be opened by several processes at once (two ``ratepilot run`` sharing a cache, four workers
sharing a limiter file). Switching a new file to WAL needs an exclusive lock, and SQLite reports
``SQLITE_BUSY`` for it without consulting the busy handler, so the setup retries briefly; after that the
30 s busy timeout covers ordinary writer contention.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .errors import InputError

__all__ = ["open_database"]

_SETUP_DEADLINE_S = 30.0


def _unusable(path: Path, exc: BaseException) -> InputError:
    """One line naming the file and what to do (exit 2): a corrupt file, a read-only or missing directory."""
    return InputError(
        f"{path}: cannot be used as a ratepilot database ({exc}). Move it aside (ratepilot recreates caches and "
        "limiter state; batch state lists the jobs it tracks), or set RATEPILOT_HOME to a writable directory",
        field="state",
    )


def open_database(
    path: str | Path,
    *,
    synchronous: str,
    schema: str = "",
    pragmas: tuple[str, ...] = (),
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), in WAL mode, with ``schema`` created.

    ``synchronous``: ``"FULL"`` where a commit must be on disk before the action it announces (batch intents),
    ``"NORMAL"`` where losing the last commits on a power cut costs little (a cache row, a limiter estimate).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=check_same_thread)
    except (OSError, sqlite3.Error) as exc:
        raise _unusable(path, exc) from None
    delay, deadline = 0.001, time.monotonic() + _SETUP_DEADLINE_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            for pragma in pragmas:
                db.execute(f"PRAGMA {pragma}")
            if schema:
                db.executescript(schema)
            return db
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                db.close()
                raise _unusable(path, exc) from None
            time.sleep(delay)  # another process holds the lock for its own setup: not a rate-limit wait
            delay = min(delay * 2, 0.05)
        except sqlite3.DatabaseError as exc:  # "file is not a database": a corrupt or foreign file
            db.close()
            raise _unusable(path, exc) from None
