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

import atexit
import hashlib
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...clock import Clock
from ...errors import StoreUnavailable
from ..core import Observation, Refusal, Reserved, ReserveParams, ScopeState, Wait
from ..types import N_DIMS
from .base import decode_state

__all__ = ["RedisStore", "safe_url"]

log = logging.getLogger("ratepilot")

TTL_MS = 2 * 86_400 * 1000  # a scope idle for two days (longer than the daily window) is forgotten
_OPERATIONS = ("reserve", "adjust", "observe", "penalize", "refuse", "load")
SOCKET_TIMEOUT_S = 5.0  # a Redis round trip that takes longer means the store is unusable (StoreUnavailable)
FLUSH_AFTER_S = 0.001  # a deferred settle waits at most this long for a call to ride along with


def safe_url(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    return url


def _script_source(name: str) -> str:
    lua = resources.files("ratepilot.limits") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


_REPLY = struct.Struct(f"<{3 + 2 * N_DIMS}d")  # a granted reservation's reply (a refusal is 3 numbers, padded)


def _padded(reply: bytes) -> bytes:
    return reply.ljust(_REPLY.size, b"\0")


class _Script:
    """One operation's Lua source and its SHA1 (what ``EVALSHA`` names; loaded when a connection opens)."""

    def __init__(self, name: str) -> None:
        self.source = _script_source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


def _log_failed_settles(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            log.warning("ratepilot: a deferred limiter settle failed (%s)", reply)


class _Held:
    """A thread's connection (and the process that opened it), kept in the thread's local storage."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: Any, pid: int) -> None:
        self.conn = conn
        self.pid = pid


@dataclass(frozen=True, slots=True, eq=False)  # told apart by identity
class _Command:
    """One EVALSHA: the script, the full key, the time argument and the packed numbers."""

    script: _Script
    key: str
    now: str
    packed: bytes


class RedisStore:
    shared = True

    def __init__(self, url: str, clock: Clock, *, prefix: str = "ratepilot:lim:") -> None:
        self.uri = url
        self.prefix = prefix
        self._clock = clock
        # Real time: use Redis TIME (one clock for every host). A clock that is not real time is injected on purpose
        # (tests) and must be the one used.
        self._send_now = not getattr(clock, "is_real_time", False)
        # Parses the URL (unix, TLS, auth) into a pool. Timeouts by default (a frozen server must not stall every
        # request for ever); ?socket_timeout= / ?socket_connect_timeout= in the URL override them.
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._scripts = {name: _Script(name) for name in _OPERATIONS}
        self._local = threading.local()
        self._mu = threading.Lock()
        # Every thread's connection, to close them all. Weak: the connection of a thread that has ended goes
        # with its thread-local (redis-py disconnects a connection when it is collected).
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # redis-py's Connection (untyped)
        self._reset_deferral()
        _STORES.add(self)

    def _reset_deferral(self) -> None:
        """The deferred-settle state (see adjust); also what a forked child starts from (its parent's locks may
        be held by threads that do not exist in the child, and its settles are the parent's to send)."""
        self._mu = threading.Lock()
        self._changed = threading.Condition(self._mu)  # settles deferred, a pipeline done, closing
        self._deferred: list[_Command] = []
        self._first_deferred_at = 0.0  # time.monotonic() of the oldest deferred settle
        self._inflight = 0  # pipelines carrying deferred settles, not yet answered
        self._flusher: threading.Thread | None = None
        self._closing = False

    # -- the round trip --------------------------------------------------------------------------------------------

    def _connection(self) -> Any:
        held: _Held | None = getattr(self._local, "held", None)
        # A forked child must not share its parent's socket: replies would be read by the wrong process.
        if held is not None and held.pid == os.getpid():
            return held.conn
        pool = self._redis.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        # Every script loaded up front, in one round trip: NOSCRIPT is then only seen after a SCRIPT FLUSH or a
        # server restart (a deferred settle refused with it runs after the call that carried it).
        for script in self._scripts.values():
            conn.send_command("SCRIPT", "LOAD", script.source)
        for _ in self._scripts:
            conn.read_response()
        held = _Held(conn, os.getpid())
        # When the thread ends, its thread-local goes, and with it this holder: its socket is closed then.
        weakref.finalize(held, conn.disconnect)
        self._local.held = held
        with self._mu:
            self._connections.add(conn)
        return conn

    def _command(self, name: str, key: str, packed: bytes) -> _Command:
        now = repr(float(self._clock.now())) if self._send_now else ""
        return _Command(self._scripts[name], self.prefix + key, now, packed)

    @staticmethod
    def _pipeline(conn: Any, commands: list[_Command]) -> list[Any]:
        """Send ``commands`` back to back and read their replies in order: one round trip for all of them.
        A command the server refused has its exception in place of its reply."""
        for c in commands:
            conn.send_command("EVALSHA", c.script.sha, 1, c.key, c.now, TTL_MS, c.packed)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:  # NOSCRIPT, or a script error: the connection is still in step
                replies.append(exc)
        return replies

    def _run(self, commands: list[_Command]) -> Any:
        """Run ``commands`` (deferred settles first, the caller's command last) and return the last one's reply.

        NOSCRIPT (first use on this server, SCRIPT FLUSH, a restart): the scripts are loaded and the commands
        that were refused (so never ran) run again, once. A closed or reset connection (a restarted server, an
        idle timeout) is reconnected and the caller's command retried once; the deferred settles are dropped
        then, as whether they ran is unknown and a refund must not run twice. A timeout is not retried: the
        script may be running. (A reservation whose reply is lost stays charged until its window passes: the
        safe direction for a limiter.)
        """
        conn = self._connection()
        own = commands[-1]
        reconnected = reloaded = False
        while True:
            try:
                replies = self._pipeline(conn, commands)
            except RedisConnectionError:
                if reconnected:
                    raise
                reconnected = True
                if len(commands) > 1:
                    log.warning("ratepilot: %d limiter settles lost with a Redis connection", len(commands) - 1)
                commands = [own]
                continue
            refused = [c for c, r in zip(commands, replies, strict=True) if isinstance(r, NoScriptError)]
            if refused and not reloaded:
                reloaded = True
                for script in {c.script.sha: c.script for c in refused}.values():
                    conn.send_command("SCRIPT", "LOAD", script.source)
                    conn.read_response()
                if all(c is not own for c in refused):  # its reply is in: run the refused settles, keep it
                    try:
                        self._run_settles(conn, refused)
                    except Exception as exc:  # the caller's reply must not be lost to a settle's failure
                        log.warning("ratepilot: %d limiter settles not sent to Redis (%s)", len(refused), exc)
                    return self._reply(replies[-1])
                commands = refused
                continue
            _log_failed_settles(replies[:-1])
            return self._reply(replies[-1])

    def _run_settles(self, conn: Any, commands: list[_Command]) -> None:
        _log_failed_settles(self._pipeline(conn, commands))

    @staticmethod
    def _reply(reply: Any) -> Any:
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _eval(self, name: str, key: str, packed: bytes) -> Any:
        try:
            with self._carrying_deferred() as taken:
                return self._run([*taken, self._command(name, key, packed)])
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(f"the limiter store {safe_url(self.uri)} cannot be used: {exc}") from exc

    # -- deferred settles ------------------------------------------------------------------------------------------
    #
    # A settle is information for later reservations. Deferred, it rides ahead of the next call from any thread
    # (which then always sees it), or the flusher sends it once it is FLUSH_AFTER_S old. Order: a call first waits
    # for any pipeline still carrying settles, so nothing can overtake a settle deferred before it started.

    @contextmanager
    def _carrying_deferred(self) -> Iterator[list[_Command]]:
        """The deferred settles, taken to be sent with this call (after any pipeline already carrying some);
        later calls wait until this one is answered."""
        with self._mu:
            while self._inflight:
                self._changed.wait()
            taken, self._deferred = self._deferred, []
            if taken:
                self._inflight += 1
        try:
            yield taken
        except BaseException:
            if taken:
                log.warning("ratepilot: %d limiter settles may not have reached Redis", len(taken))
            raise
        finally:
            if taken:
                with self._mu:
                    self._inflight -= 1
                    self._changed.notify_all()

    def _defer(self, command: _Command) -> None:
        with self._mu:
            if not self._deferred:
                self._first_deferred_at = time.monotonic()
                self._changed.notify_all()  # the flusher's clock starts now (not on every settle)
            self._deferred.append(command)
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(target=self._flush_loop, name="ratepilot-redis-flush", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        """Send deferred settles that no call picked up within FLUSH_AFTER_S (so other processes see them)."""
        while True:
            with self._mu:
                while not self._deferred and not self._closing:
                    self._changed.wait()
                if self._closing:
                    return
                due = self._first_deferred_at + FLUSH_AFTER_S - time.monotonic()
            if due > 0:
                time.sleep(due)  # a coalescing window: the caller's next call usually takes them first
            try:
                self.flush()
            except Exception as exc:  # a background thread: nobody to raise to
                log.warning("ratepilot: limiter settles not sent to Redis (%s)", exc)

    def flush(self) -> None:
        """Send the deferred settles now (after any pipeline already carrying some)."""
        with self._carrying_deferred() as taken:
            if taken:
                self._run_settles(self._connection(), taken)

    def _call(self, name: str, key: str, numbers: list[float]) -> Any:
        return self._eval(name, key, struct.pack(f"<{len(numbers)}d", *numbers))

    # -- the store operations --------------------------------------------------------------------------------------

    def reserve(self, key: str, costs: tuple[float, ...], params: ReserveParams) -> Reserved | Wait:
        numbers = [params.probe_timeout, params.blind_after, params.headroom, params.foreign_horizon]
        out = _REPLY.unpack(
            _padded(self._call("reserve", key, [*numbers, *costs, *params.ceiling, params.start_burst]))
        )
        if out[0] == 0:
            return Wait(out[1], probe=out[2] > 0)
        n = N_DIMS
        return Reserved(
            seq=int(out[1]),
            used=out[3 : 3 + n],
            charged=tuple(x == 1 for x in out[3 + n : 3 + 2 * n]),
            probe=out[2] > 0,
            lease=out[2],
        )

    def adjust(
        self, key: str, deltas: tuple[float, ...], charged: tuple[bool, ...], probe_hold: float, probe_lease: float
    ) -> None:
        """Deferred: sent ahead of this store's next call, in the same round trip, or within FLUSH_AFTER_S.

        A settle is information for later reservations, and the next one (ours) always sees it; other processes
        see it at most a millisecond late. That makes reserve + settle one round trip instead of two.
        """
        numbers = [probe_hold, *deltas, *(float(c) for c in charged), probe_lease]
        self._defer(self._command("adjust", key, struct.pack(f"<{len(numbers)}d", *numbers)))

    def observe(self, key: str, obs: Observation) -> None:
        # The scripts' arguments and replies change freely between versions: each version loads its own scripts
        # (EVALSHA names them by the hash of their source). Only the stored state must stay readable.
        numbers: list[float] = [len(obs.dims)]
        for o in obs.dims:
            numbers += [o.dim, o.limit, o.server_limit, o.used]
        numbers += obs.answered_costs or (0.0,) * N_DIMS
        numbers += obs.answered or (0.0,) * N_DIMS
        numbers += [obs.start_burst, 1.0 if obs.answered else 0.0]
        self._call("observe", key, numbers)

    def penalize(self, key: str, wait: float) -> None:
        self._call("penalize", key, [wait])

    def refuse(self, key: str, refusal: Refusal) -> None:
        numbers = [refusal.wait, refusal.seq, float(refusal.slow_down), *refusal.used, *refusal.costs]
        self._call("refuse", key, numbers)

    def load(self, key: str) -> tuple[ScopeState | None, float]:
        raw, now = self._eval("load", key, b"")
        return (decode_state(raw.decode()) if raw else None), float(now)

    def close(self) -> None:
        """Send what is deferred, stop the flusher, close the connections. The store may be used again after."""
        try:
            self.flush()
        except Exception as exc:  # closing must not fail on a server that is gone
            log.warning("ratepilot: limiter settles not sent to Redis on close (%s)", exc)
        with self._mu:
            while self._inflight:  # the flusher's own pipeline
                self._changed.wait()
            self._closing = True
            self._changed.notify_all()
            flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=5.0)
        with self._mu:
            self._closing = False
            connections, self._connections = list(self._connections), weakref.WeakSet()
            self._local = threading.local()  # a later call opens (and tracks) a new connection
        for conn in connections:
            conn.disconnect()
        self._redis.close()


# Every open store: flushed at interpreter exit (the flusher is a daemon thread, which exit does not wait for),
# and given fresh locks and an empty settle queue in a forked child.
_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _flush_all_at_exit() -> None:
    for store in list(_STORES):
        try:
            store.flush()
        except Exception as exc:  # exiting: say it, do not raise
            log.warning("ratepilot: limiter settles not sent to Redis at exit (%s)", exc)


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._reset_deferral()


atexit.register(_flush_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
