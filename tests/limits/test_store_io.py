"""Where store round trips run: never on an event loop's thread, in order, and a Redis connection that
recovers from a flushed script cache or a killed connection.

The limiters here start with the whole minute as their burst allowance (``start_burst=60``): these tests are
about where store calls run, not about the learned burst (test_burst.py).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from limits_helpers import REDIS_URL, headers

from ratepilot.clock import FakeClock, SystemClock
from ratepilot.limits import Cost, Limiter, Scope, key_id_for
from ratepilot.limits.stores import open_store
from ratepilot.limits.stores.base import decode_state
from ratepilot.limits.stores.redis import RedisStore

SCOPE = Scope(key_id_for("sk-test-store-io"), "gpt-4o-mini")


class Recording:
    """Wraps a real store: records the thread of every call; ``gate`` (if set) holds reservations back."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.shared = inner.shared
        self.uri = inner.uri
        self.calls: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.adjusted = threading.Event()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)

        def call(*args: Any) -> Any:
            self.calls.append((name, threading.current_thread().name))
            if name == "reserve" and self.gate is not None:
                self.entered.set()
                self.gate.wait(10)
            try:
                return fn(*args)
            finally:
                if name == "adjust":
                    self.adjusted.set()

        return call


def _learned(lim: Limiter) -> None:
    g = lim.acquire(SCOPE, Cost(1, 100))
    lim.observe(SCOPE, headers((60, 59), (10_000, 9_900)), sent_at=g.granted_at, grant=g)
    lim.settle(g, 100)


@pytest.fixture(params=["sqlite", "redis"])
def shared_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The stores that do I/O (the memory store is called on the loop directly)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'limits.db'}"
    return f"{REDIS_URL}?prefix={request.getfixturevalue('redis_prefix')}"


async def test_shared_store_calls_never_run_on_the_loop_thread(shared_uri: str, clock: FakeClock) -> None:
    store = Recording(open_store(shared_uri, clock))
    lim = Limiter(store, clock=clock, start_burst=60.0)  # type: ignore[arg-type]
    try:
        g = await lim.aacquire(SCOPE, Cost(1, 100))
        lim.observe(SCOPE, headers((60, 59), (10_000, 9_900)), sent_at=g.granted_at, grant=g)
        lim.settle(g, 40)  # handed over: returns at once
        g2 = await lim.aacquire(SCOPE, Cost(1, 100))  # queued behind the settle and observe
        lim.cancel(g2)
        lim.penalize(SCOPE, 1.0)
        state = lim.state(SCOPE)  # a read waits for the writes handed over before it
        assert state["tpm"].remaining == pytest.approx(9_900, abs=1)  # the probe's own charge came from the headers
        assert state["rpm"].limit == 60
        loop_thread = threading.current_thread().name
        expected = ["reserve", "observe", "adjust", "reserve", "adjust", "penalize", "load"]
        assert [name for name, _ in store.calls] == expected
        assert all(thread != loop_thread for _, thread in store.calls)
    finally:
        lim.close()


async def test_a_waiter_cancelled_during_its_reservation_holds_nothing(shared_uri: str, clock: FakeClock) -> None:
    store = Recording(open_store(shared_uri, clock))
    lim = Limiter(store, clock=clock, start_burst=60.0)  # type: ignore[arg-type]
    try:
        _learned(lim)
        before = lim.state(SCOPE)["tpm"].remaining
        store.gate, store.entered = threading.Event(), threading.Event()
        task = asyncio.create_task(lim.aacquire(SCOPE, Cost(1, 500)))
        assert await asyncio.to_thread(store.entered.wait, 10)  # the reservation is in flight
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.gate.set()  # now the store grants it: the limiter must give it back
        store.gate = None
        lim._io.shutdown(wait=True)  # type: ignore[union-attr]  # (what close() does first)
        lim._io = None
        assert lim.state(SCOPE)["tpm"].remaining == pytest.approx(before, abs=1)
        assert [name for name, _ in store.calls][-3:] == ["reserve", "adjust", "load"]
    finally:
        lim.close()


def test_memory_store_is_called_in_place(clock: FakeClock) -> None:
    lim = Limiter("memory://", clock=clock, start_burst=60.0)

    async def main() -> None:
        await lim.aacquire(SCOPE, Cost(1, 1))

    asyncio.run(main())
    assert lim._io is None  # no I/O thread for a store that does no I/O
    lim.close()


@pytest.fixture
def redis_limiter(redis_prefix: str, clock: FakeClock) -> Iterator[tuple[RedisStore, Limiter]]:
    """A limiter on a Redis store that has learned the scope's limits (60 RPM)."""
    store = RedisStore(REDIS_URL, clock, prefix=redis_prefix)
    lim = Limiter(store, clock=clock, start_burst=60.0)
    _learned(lim)
    yield store, lim
    lim.close()


def _still_works(lim: Limiter) -> None:
    lim.settle(lim.acquire(SCOPE, Cost(1, 100)), 50)
    assert lim.state(SCOPE)["rpm"].limit == 60


def test_redis_store_reloads_its_scripts_after_a_flush(redis_limiter: tuple[RedisStore, Limiter]) -> None:
    admin = redis.Redis.from_url(REDIS_URL)
    admin.script_flush()  # a restarted server, or someone's SCRIPT FLUSH
    admin.close()
    _still_works(redis_limiter[1])


def test_redis_store_reconnects_after_its_connection_is_killed(redis_limiter: tuple[RedisStore, Limiter]) -> None:
    store, lim = redis_limiter
    conn = store._connection()
    conn.send_command("CLIENT", "ID")
    client_id = conn.read_response()
    admin = redis.Redis.from_url(REDIS_URL)
    assert admin.client_kill_filter(_id=client_id) == 1
    admin.close()
    _still_works(lim)  # one transparent reconnect


def test_redis_store_uses_one_connection_per_thread(redis_prefix: str, clock: FakeClock) -> None:
    store = RedisStore(REDIS_URL, clock, prefix=redis_prefix)
    try:
        mine = store._connection()
        assert store._connection() is mine
        theirs: list[object] = []
        t = threading.Thread(target=lambda: theirs.append(store._connection()))
        t.start()
        t.join()
        assert theirs[0] is not mine
    finally:
        store.close()
    assert len(store._connections) == 0


def test_redis_connections_of_ended_threads_are_not_kept(redis_prefix: str, clock: FakeClock) -> None:
    store = RedisStore(REDIS_URL, clock, prefix=redis_prefix)
    try:
        threads = [threading.Thread(target=store._connection) for _ in range(5)]
        for t in threads:
            t.start()
            t.join()
        gc.collect()
        assert len(store._connections) == 0
    finally:
        store.close()


def test_open_store_keeps_a_unix_socket_url_intact(clock: FakeClock) -> None:
    store = open_store("unix:///tmp/ratepilot-test.sock?db=2&prefix=p:", clock)
    try:
        assert isinstance(store, RedisStore)
        assert store.uri == "unix:///tmp/ratepilot-test.sock?db=2" and store.prefix == "p:"
        kwargs = store._redis.connection_pool.connection_kwargs
        assert kwargs["path"] == "/tmp/ratepilot-test.sock" and kwargs["db"] == 2
    finally:
        store.close()


async def test_a_refund_landing_while_the_head_asks_the_store_wakes_it(shared_uri: str) -> None:
    # Real clock: the head's reservation is held in flight and a refund is handed over behind it. The answer the
    # head then gets ("wait ~16 s") predates the refund, so it must not sleep on it.
    store = Recording(open_store(shared_uri, SystemClock()))
    lim = Limiter(store, start_burst=60.0)  # type: ignore[arg-type]
    try:
        g = await lim.aacquire(SCOPE, Cost(1, 1))  # the probe
        lim.observe(SCOPE, headers((1_000, 999), (3_000, 1_000)), sent_at=g.granted_at, grant=g)
        big = await lim.aacquire(SCOPE, Cost(1, 900))  # 100 tokens left; 50 tokens/s come back
        store.gate, store.entered, store.adjusted = threading.Event(), threading.Event(), threading.Event()
        head = asyncio.create_task(lim.aacquire(SCOPE, Cost(1, 900)))
        assert await asyncio.to_thread(store.entered.wait, 10)
        lim.settle(big, 0)  # gives 900 back, queued behind the head's reservation
        store.gate.set()
        # Hold the loop until the refund is applied: its wake-up lands before the head sees its stale answer.
        assert store.adjusted.wait(10)
        store.gate = None
        grant = await asyncio.wait_for(head, timeout=5)  # not ~16 s
        assert grant.cost.tokens == 900
    finally:
        lim.close()


async def test_close_applies_the_updates_handed_over(shared_uri: str, clock: FakeClock) -> None:
    lim = Limiter(shared_uri, clock=clock, start_burst=60.0)
    _learned(lim)
    before = lim.state(SCOPE)["tpm"].remaining
    g = await lim.aacquire(SCOPE, Cost(1, 500))
    lim.settle(g, 100)  # handed over, not yet applied perhaps
    lim.close()
    again = Limiter(shared_uri, clock=clock, start_burst=60.0)
    try:
        assert again.state(SCOPE)["tpm"].remaining == pytest.approx(before - 100, abs=1)
    finally:
        again.close()


def test_a_forked_child_gets_its_own_io_thread(shared_uri: str, clock: FakeClock) -> None:
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    lim = Limiter(shared_uri, clock=clock, start_burst=60.0)
    try:

        async def one() -> int:
            return (await lim.aacquire(SCOPE, Cost(1, 1))).seq

        asyncio.run(one())  # the parent's I/O thread exists now
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=lambda: out.put(asyncio.run(one())), daemon=True)
        child.start()
        assert out.get(timeout=30) > 0  # would hang on the inherited executor, whose thread did not fork
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        lim.close()


def test_a_redis_settle_rides_with_the_next_call_in_one_round_trip(
    redis_limiter: tuple[RedisStore, Limiter], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ratepilot.limits.stores.redis as redis_store

    monkeypatch.setattr(redis_store, "FLUSH_AFTER_S", 60.0)  # the flusher stays out of it
    store, lim = redis_limiter
    conn = store._connection()
    wire: list[str] = []
    send, read = conn.send_command, conn.read_response
    conn.send_command = lambda *a, **k: (wire.append("send"), send(*a, **k))[1]
    conn.read_response = lambda *a, **k: (wire.append("read"), read(*a, **k))[1]
    g = lim.acquire(SCOPE, Cost(1, 100))
    wire.clear()
    lim.settle(g, 40)
    assert wire == [] and len(store._deferred) == 1  # nothing sent yet
    before = lim.state(SCOPE)["tpm"].remaining  # the read takes the settle along: it sees it
    assert wire == ["send", "send", "read", "read"]  # both commands, then both replies: one round trip
    assert before == pytest.approx(9_900 - 40, abs=1)


def test_a_redis_settle_no_call_picks_up_is_sent_by_the_flusher(
    redis_prefix: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ratepilot.limits.stores.redis as redis_store

    monkeypatch.setattr(redis_store, "FLUSH_AFTER_S", 0.0)
    ours = RedisStore(REDIS_URL, clock, prefix=redis_prefix)
    theirs = RedisStore(REDIS_URL, clock, prefix=redis_prefix)  # another process's view of the same scope
    sent = threading.Event()
    deferred: list[Any] = []
    run_settles, defer = ours._run_settles, ours._defer

    def spy(conn: Any, commands: list[Any]) -> None:
        run_settles(conn, commands)
        if threading.current_thread().name == "ratepilot-redis-flush" and any(c in deferred for c in commands):
            sent.set()  # the flusher has sent the settle this test made

    monkeypatch.setattr(ours, "_run_settles", spy)
    lim = Limiter(ours, clock=clock, start_burst=60.0)
    other = Limiter(theirs, clock=clock, start_burst=60.0)
    try:
        _learned(lim)
        before = other.state(SCOPE)["tpm"].remaining
        g = lim.acquire(SCOPE, Cost(1, 500))
        monkeypatch.setattr(ours, "_defer", lambda command: (deferred.append(command), defer(command)))
        lim.settle(g, 100)  # deferred; no further call from us
        assert sent.wait(10)
        assert other.state(SCOPE)["tpm"].remaining == pytest.approx(before - 100, abs=1)
    finally:
        lim.close()
        other.close()


def test_redis_settles_after_close_still_reach_redis(redis_prefix: str, clock: FakeClock) -> None:
    ours = RedisStore(REDIS_URL, clock, prefix=redis_prefix)
    theirs = RedisStore(REDIS_URL, clock, prefix=redis_prefix)
    lim, other = Limiter(ours, clock=clock, start_burst=60.0), Limiter(theirs, clock=clock, start_burst=60.0)
    try:
        _learned(lim)
        before = other.state(SCOPE)["tpm"].remaining
        g = lim.acquire(SCOPE, Cost(1, 500))
        ours.close()  # e.g. a grant given back by a callback after the limiter was closed
        lim.cancel(g)
        ours.close()  # (what Limiter.close does): sends it
        assert other.state(SCOPE)["tpm"].remaining == pytest.approx(before, abs=1)
    finally:
        other.close()


EXIT_WITHOUT_CLOSE = """
import sys
from ratepilot.clock import FakeClock
from ratepilot.limits import Cost, Limiter, Scope
from ratepilot.limits.stores.redis import RedisStore
import ratepilot.limits.stores.redis as redis_store
redis_store.FLUSH_AFTER_S = 3600.0  # only the exit hook can send it
clock = FakeClock()
lim = Limiter(RedisStore(sys.argv[1], clock, prefix=sys.argv[2]), clock=clock, start_burst=60.0)
grant = lim.acquire(Scope(sys.argv[3], "gpt-4o-mini"), Cost(1, 500))
lim.cancel(grant)  # deferred; the process exits without close()
"""


def test_a_redis_settle_deferred_at_exit_is_sent(redis_prefix: str, clock: FakeClock) -> None:
    theirs = Limiter(RedisStore(REDIS_URL, clock, prefix=redis_prefix), clock=clock, start_burst=60.0)
    try:
        _learned(theirs)
        before = theirs.state(SCOPE)["tpm"].remaining
        done = subprocess.run(
            [sys.executable, "-c", EXIT_WITHOUT_CLOSE, REDIS_URL, redis_prefix, SCOPE.key_id],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert theirs.state(SCOPE)["tpm"].remaining == pytest.approx(before, abs=1)  # reserved, then given back
    finally:
        theirs.close()


# --------------------------------------------------------------- states written by other versions of the store
_N = 5
_ADJ, _OSEQ = slice(4 + 3 * _N, 4 + 4 * _N), slice(4 + 4 * _N, 4 + 5 * _N)  # the retired blocks' positions


def _previous_version_state(now: float) -> list[float]:
    """A learned scope as the version before the retired fields wrote it: their blocks filled in."""
    lim = [300.0, 50_000.0, 0.0, 0.0, 0.0]
    tat = [now + 10.0, now + 6.0, 0.0, 0.0, 0.0]  # 50 requests and 5,000 tokens in use
    adj, oseq = [3.5, 120.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 0.0, 0.0]
    frate, ft, tol = [0.25, 10.0, 0.0, 0.0, 0.0], [now, now, 0.0, 0.0, 0.0], [20.0, 20.0, 0.0, 0.0, 0.0]
    return [7, 0.0, 0.0, 0, *lim, *lim, *tat, *adj, *oseq, *frate, *ft, *tol, *[0.0] * _N, 0.0, 0.0, 0.0]


# A state as the Lua scripts store it (one MessagePack sequence of numbers), written and read back raw.
_WRITE = (
    "local v = {} for i, x in ipairs(ARGV) do v[i] = tonumber(x) end "
    "redis.call('SET', KEYS[1], cmsgpack.pack(unpack(v))) return 1"
)
_READ = (
    "local v = {cmsgpack.unpack(redis.call('GET', KEYS[1]))} for i, x in ipairs(v) do v[i] = tostring(x) end return v"
)


def _write_raw(uri: str, numbers: list[float]) -> None:
    if uri.startswith("sqlite"):
        with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
            db.execute("CREATE TABLE IF NOT EXISTS ratepilot_limits (key TEXT PRIMARY KEY, state TEXT NOT NULL)")
            db.execute("INSERT INTO ratepilot_limits VALUES (?, ?)", (SCOPE.key, " ".join(map(repr, numbers))))
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.eval(_WRITE, 1, uri.split("prefix=")[1] + SCOPE.key, *map(repr, numbers))
    finally:
        client.close()


def _read_raw(uri: str) -> list[float]:
    if uri.startswith("sqlite"):
        with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
            row = db.execute("SELECT state FROM ratepilot_limits WHERE key = ?", (SCOPE.key,)).fetchone()
        return [float(x) for x in row[0].split()]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [float(x) for x in client.eval(_READ, 1, uri.split("prefix=")[1] + SCOPE.key)]
    finally:
        client.close()


def test_a_state_written_by_the_previous_version_loads_and_keeps_its_layout(shared_uri: str, clock: FakeClock) -> None:
    """Its retired fields (adj, oseq) are ignored; what this version writes back keeps them, as zeros, in their
    slots, so an older version sharing the store still reads every other field where it expects it."""
    old = _previous_version_state(clock.now())
    _write_raw(shared_uri, old)
    with Limiter(shared_uri, clock=clock) as lim:
        state = lim.state(SCOPE)
        assert state["rpm"].limit == 300 and state["rpm"].remaining == pytest.approx(250)
        assert state["tpm"].remaining == pytest.approx(45_000)
        grant = lim.acquire(SCOPE, Cost(1, 100))  # a learned scope: no probe, admitted at once
        assert not grant.probe and grant.seq == 8 and clock.now() == 1_000.0
        lim.settle(grant, 100)
    new = _read_raw(shared_uri)
    assert len(new) == len(old)
    assert new[_ADJ] == [0.0] * _N and new[_OSEQ] == [0.0] * _N
    kept = [i for i in range(len(old)) if i not in range(_ADJ.start, _OSEQ.stop)]
    changed = {i for i in kept if new[i] != old[i]}
    assert changed == {0, 14, 15}  # seq, and the rpm and tpm tats the request moved; the rest as it was


def test_numbers_a_later_version_appends_are_ignored(shared_uri: str, clock: FakeClock) -> None:
    _write_raw(shared_uri, [*_previous_version_state(clock.now()), 42.0, 43.0])
    with Limiter(shared_uri, clock=clock) as lim:
        assert lim.state(SCOPE)["rpm"].remaining == pytest.approx(250)
        lim.settle(lim.acquire(SCOPE, Cost(1, 100)), 100)
    with pytest.raises(ValueError, match="corrupt limiter state"):
        decode_state("1 2 3")  # too short for any version: refused, not guessed
