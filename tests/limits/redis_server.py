"""The Redis the tests talk to: the suite's own ``redis-server``, started on a free port for this run.

A run that silently skipped every Redis test would hide the store most users share across hosts exactly where
a newcomer runs ``make test``. So: when the ``redis-server`` binary is on PATH (Debian: ``apt-get install
redis-server``), one is started for the test run (its data in a temporary directory, nothing saved, stopped at
exit), and every test — including processes the tests fork or spawn — uses it. Without the binary, a server
already answering on 127.0.0.1:6379 is used (``.ci/run`` starts one). With neither, the Redis tests *fail*,
saying how to get one. ``RATEPILOT_TEST_REDIS_URL`` overrides all of this (and is how child processes inherit
the choice).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator

import redis

__all__ = ["REDIS_URL", "redis_error"]

_ENV = "RATEPILOT_TEST_REDIS_URL"
_SHARED = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_own(binary: str) -> str | None:
    directory = tempfile.mkdtemp(prefix="ratepilot-test-redis-")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def stop() -> None:
        if proc.poll() is None and os.getpid() == owner:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)

    owner = os.getpid()  # forked children must not stop the parent's server at their exit
    atexit.register(stop)
    # Ready when the server says so in its log (a blocking read: no polling); EOF means it exited.
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"Ready to accept connections" in line:
            # Keep draining its log, or a full pipe would one day block the server.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return url if _answers(url) else None
    return None


def _choose() -> tuple[str, str | None]:
    """(url, why it cannot be used or None)."""
    url = os.environ.get(_ENV)
    if url:
        return url, None if _answers(url) else f"{_ENV}={url} does not answer"
    binary = shutil.which("redis-server")
    if binary:
        url = _start_own(binary)
        if url:
            os.environ[_ENV] = url  # processes the tests start use the same server
            return url, None
    if _answers(_SHARED):
        os.environ[_ENV] = _SHARED
        return _SHARED, None
    return _SHARED, (
        "no Redis for the tests: install redis-server (Debian: apt-get install redis-server) so the suite can "
        "start its own, or run one on 127.0.0.1:6379"
    )


REDIS_URL, _ERROR = _choose()


def redis_error() -> str | None:
    """Why no Redis can be had (the Redis tests fail with this), or None."""
    return _ERROR


@contextlib.contextmanager
def scratch_prefix(tag: str = "") -> Iterator[str]:
    """A key prefix of one test's own on the suite's Redis, its keys deleted afterwards (never FLUSHALL: the
    server may be shared)."""
    prefix = f"rptest:{tag}{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
