"""One owner per job: an exclusive OS file lock that dies with its process.

Two ``ratepilot run`` on the same results file (two terminals, a cron overlap) would both send every request
and append every answer: paid twice, written twice. Before a job touches its results, it takes
``fcntl.flock`` on ``<RESULTS>.ratepilot.lock``; a second process finds it held and stops at once (exit 5),
naming the PID and host that hold it. The kernel drops the lock when the holder exits, however it exits
(``kill -9`` included), so no stale lock is ever left to clean up. The lock file itself stays (deleting a
lock file races with the next process opening it); it holds only the last holder's PID, host and start time.

POSIX only (``fcntl``); on NFS, ``flock`` is as good as the server's lock support.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from .errors import RatePilotError

__all__ = ["JobLocked", "job_lock", "lock_path"]

LOCK_SUFFIX = ".ratepilot.lock"


class JobLocked(RatePilotError):
    """Another live process owns this job (exit code 5: conflict)."""


def lock_path(results: str | os.PathLike[str]) -> Path:
    path = Path(results)
    return path.with_name(path.name + LOCK_SUFFIX)


@contextmanager
def job_lock(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the exclusive lock at ``path`` for the block, or raise :class:`JobLocked` at once."""
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobLocked(
                f"{what} is in use by another ratepilot process ({_holder(fd)}); wait for it to finish, "
                "or stop it and rerun (its progress is kept)"
            ) from None
        # Who holds it, for the message the next process shows (written only while holding the lock).
        os.ftruncate(fd, 0)
        os.pwrite(fd, orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(fd: int) -> str:
    try:
        info = orjson.loads(os.pread(fd, 4096, 0))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']}, since {since}"
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OSError):
        return "holder unknown"
