"""The Limiter: thin sync (threads) and asyncio drivers around one store of sans-IO scope states.

Waiting is the only thing the drivers do. Per scope, waiters form one queue ordered by (priority, arrival):
only the head asks the store; everyone else waits for their turn, so admission is FIFO within a priority
and a LOW waiter (polls) never takes capacity while a NORMAL one waits. LOW reservations must also leave
``low_headroom`` of every bucket free, which protects NORMAL traffic of *other* processes sharing the store.

The head waits as long as the store says, on the injected clock (``clock.wait``: the same call on the real
clock and on a test's fake one); a local settle, cancel or observe sets its wakeup and ends the wait early
(capacity may have come back). Waiting for a probe's response on a shared store re-checks every ``recheck``
seconds, because the probe may belong to another process.

On an event loop, the shared stores' round trips (SQLite, Redis) never run on the loop's thread: they go to
one I/O thread per limiter, which runs them one at a time in the order they were asked for. Reservations are
awaited; settle, cancel, observe and penalize are handed over and return at once (a response must not wait
for the limiter's bookkeeping), and anything read afterwards on the loop (a reservation,
:meth:`Limiter.state`) sees them, because it queues behind them. Reads from other threads go to the store
directly; :meth:`Limiter.aflush` waits for the handed-over updates.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import heapq
import itertools
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..clock import Clock, SystemClock, Wakeup
from ..protocol.headers import RateLimitHeaders
from .core import TOL_START, Refusal, Reserved, ReserveParams, Wait, view
from .learning import interpret
from .stores import Store, open_store
from .types import DIM_INDEX, DIMENSIONS, N_DIMS, Cost, CostTooLarge, DimensionView, Grant, Priority, Scope

__all__ = ["Limiter"]

log = logging.getLogger("ratepilot")
T = TypeVar("T")

_RECENT_GRANTS = 4096  # per scope, to find the grant of an observed request from its sent_at
PROBE_GRACE = 1.0  # seconds a settled probe keeps its lease while its response's headers are observed


@dataclass(eq=False)
class _Waiter:
    priority: int
    seq: int
    loop: asyncio.AbstractEventLoop | None = None
    turn: asyncio.Future[None] | None = None  # async: resolved when this waiter becomes the head
    # Set to cut the head's wait short. Cleared before each store call, so a wake-up that lands while the
    # reservation is in flight (on the I/O thread) ends the wait on its answer at once: that answer predates it.
    wakeup: Wakeup = field(default_factory=Wakeup)
    active: bool = True


@dataclass(eq=False)
class _Queue:
    heap: list[tuple[int, int, _Waiter]] = field(default_factory=list)
    recent: list[tuple[float, int, Grant]] = field(default_factory=list)  # (granted_at, id, grant)

    def head(self) -> _Waiter | None:
        while self.heap and not self.heap[0][2].active:
            heapq.heappop(self.heap)
        return self.heap[0][2] if self.heap else None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Limiter:
    """Admits requests per scope under limits learned from the server (see :mod:`ratepilot.limits`)."""

    def __init__(
        self,
        store: str | Store = "memory://",
        clock: Clock | None = None,
        ceiling: Mapping[str, float] | None = None,
        safety_margin: float = 0.0,
        *,
        low_headroom: float = 0.1,
        probe_timeout: float = 60.0,
        blind_after: int = 3,
        recheck: float = 0.05,
        foreign_horizon: float = 3.0,
        start_burst: float = TOL_START,
    ) -> None:
        if not 0.0 <= safety_margin < 1.0:
            raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")
        if not 0.0 <= low_headroom < 1.0:
            raise ValueError(f"low_headroom must be in [0, 1), got {low_headroom}")
        self.clock: Clock = clock or SystemClock()
        self.store: Store = open_store(store, self.clock) if isinstance(store, str) else store
        ceil = [0.0] * N_DIMS
        for name, value in (ceiling or {}).items():
            if name not in DIM_INDEX:
                raise ValueError(f"unknown limit {name!r} in ceiling: use {', '.join(d.name for d in DIMENSIONS)}")
            if not value > 0:
                raise ValueError(f"ceiling {name} must be positive, got {value}")
            ceil[DIM_INDEX[name]] = float(value)
        self.ceiling = tuple(ceil)
        self.safety_margin = safety_margin
        if not start_burst > 0:
            raise ValueError(f"start_burst must be positive (seconds of refill), got {start_burst}")
        # Seconds of refill a minute dimension may spend at once when first learned; the allowance then grows
        # while the server keeps answering, and is cut when it refuses (core.py). 60: trust the minute bucket.
        self.start_burst = float(start_burst)
        self.recheck = recheck
        self._params = ReserveParams(self.ceiling, probe_timeout, blind_after, 0.0, foreign_horizon, start_burst)
        self._low_params = ReserveParams(
            self.ceiling, probe_timeout, blind_after, low_headroom, foreign_horizon, start_burst
        )
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        # Stores that do I/O get an I/O thread when first used from an event loop (see the module docstring).
        self._offload = self.store.shared
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._io_pid = 0

    def _queue(self, scope: Scope) -> _Queue:
        q = self._queues.get(scope.key)
        if q is None:
            q = self._queues[scope.key] = _Queue()
        return q

    # --------------------------------------------------------------------------- where store calls run
    def _on_loop(self) -> bool:
        """Is this call on an event loop's thread, with a store whose calls block (and so must not run here)?"""
        if not self._offload:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def _io_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._mu:
            # A forked child inherits the executor but not its thread: it needs its own.
            if self._io is None or self._io_pid != os.getpid():
                # One worker: store operations from the loop run in the order they were asked for.
                self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ratepilot-limiter")
                self._io_pid = os.getpid()
            return self._io

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call whose answer the caller needs now (on a loop: after the writes handed over before it)."""
        if self._on_loop():
            return self._io_thread().submit(fn, *args).result()
        return fn(*args)

    def _write(self, scope: Scope, fn: Callable[..., object], *args: Any) -> None:
        """A store update, then wake the scope's head. On a loop it is handed to the I/O thread."""
        if self._on_loop():
            self._io_thread().submit(self._write_behind, scope, fn, *args)
            return
        fn(*args)
        self._kick(scope)

    def _write_behind(self, scope: Scope, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # nobody is waiting for this call to raise to: say it here
            # Scope keys are hashes of the API key, never the key.
            log.warning("ratepilot: limiter store update failed for %s (%s: %s)", scope.model, type(exc).__name__, exc)
        self._kick(scope)

    async def _atry(self, scope: Scope, cost: Cost, priority: Priority) -> Grant | Wait:
        if not self._offload:
            return self._try(scope, cost, priority)
        fut = self._io_thread().submit(self._try, scope, cost, priority)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            # The reservation may still be made by the I/O thread: a cancelled waiter holds nothing.
            fut.add_done_callback(self._give_back)
            raise

    def _give_back(self, fut: concurrent.futures.Future[Grant | Wait]) -> None:
        if not fut.cancelled() and fut.exception() is None and isinstance(grant := fut.result(), Grant):
            try:
                self.cancel(grant)
            except Exception as exc:  # a callback: nobody to raise to (e.g. the limiter was closed meanwhile)
                log.warning("ratepilot: could not give back a cancelled waiter's reservation (%s)", exc)

    # ----------------------------------------------------------------- the one decision, shared by drivers
    def _try(self, scope: Scope, cost: Cost, priority: Priority) -> Grant | Wait:
        params = self._low_params if priority >= Priority.LOW else self._params
        decision = self.store.reserve(scope.key, cost.per_dimension(), params)
        if isinstance(decision, Wait):
            if math.isinf(decision.seconds):
                raise CostTooLarge(
                    f"a request costing {cost.tokens} tokens exceeds the server's limit for {scope.model or 'this key'}"
                    f" ({', '.join(f'{k} {v.server_limit}' for k, v in self.state(scope).items() if v.server_limit)})"
                )
            return decision
        return self._grant(scope, cost, decision)

    def _grant(self, scope: Scope, cost: Cost, r: Reserved) -> Grant:
        now = self.clock.now()
        grant = Grant(scope, cost, r.seq, now, r.used, r.charged, r.probe, r.lease)
        with self._mu:
            recent = self._queue(scope).recent
            recent.append((now, grant.id, grant))
            if len(recent) > 2 * _RECENT_GRANTS:
                del recent[:_RECENT_GRANTS]
        return grant

    def _timeout(self, wait: Wait) -> float:
        """How long the head waits before asking again, unless woken first. Behind a probe: until its lease
        ends (observing its response wakes the head first), or the next re-check on a shared store, where the
        probe may be another process's and no local wake-up would come."""
        if wait.probe and self.store.shared:
            return min(wait.seconds, self.recheck)
        return wait.seconds

    def _nobody_waiting(self, scope: Scope) -> bool:
        with self._mu:
            q = self._queues.get(scope.key)
            return q is None or q.head() is None

    def _enqueue(self, scope: Scope, priority: Priority, loop: asyncio.AbstractEventLoop | None) -> _Waiter:
        w = _Waiter(int(priority), next(self._seq), loop)
        with self._mu:
            q = self._queue(scope)
            heapq.heappush(q.heap, (w.priority, w.seq, w))
        return w

    def _is_head_or_arm(self, scope: Scope, w: _Waiter, loop: asyncio.AbstractEventLoop) -> bool:
        """True if ``w`` heads its queue; otherwise arm its turn future (a higher priority may have arrived)."""
        with self._mu:
            if self._queue(scope).head() is w:
                w.turn = None
                return True
            w.turn = loop.create_future()
            return False

    def _dequeue(self, scope: Scope, w: _Waiter) -> None:
        with self._mu:
            w.active = False
            head = self._queue(scope).head()
            if head is not None:
                self._wake_turn(head)

    def _wake_turn(self, w: _Waiter) -> None:
        # Called with _mu held: the new head may proceed.
        if w.loop is None:
            self._cond.notify_all()
        elif w.turn is not None:
            w.loop.call_soon_threadsafe(_resolve, w.turn)

    def _kick(self, scope: Scope) -> None:
        """Capacity may have changed: cut the head's sleep short."""
        with self._mu:
            q = self._queues.get(scope.key)
            head = q.head() if q else None
            if head is None:
                return
            head.wakeup.set()

    # ----------------------------------------------------------------------------------- sync driver
    def acquire(self, scope: Scope, cost: Cost | None = None, priority: Priority = Priority.NORMAL) -> Grant:
        """Block until ``cost`` is admitted in ``scope``; FIFO within a priority."""
        cost = cost or Cost()
        if self._nobody_waiting(scope):  # fast path: no queue to respect
            decision = self._read(self._try, scope, cost, priority)
            if isinstance(decision, Grant):
                return decision
        w = self._enqueue(scope, priority, None)
        try:
            while True:
                with self._cond:
                    while self._queue(scope).head() is not w:
                        self._cond.wait()
                w.wakeup.clear()
                decision = self._read(self._try, scope, cost, priority)
                if isinstance(decision, Grant):
                    return decision
                self.clock.wait(w.wakeup, self._timeout(decision))
        finally:
            self._dequeue(scope, w)

    # -------------------------------------------------------------------------------- asyncio driver
    async def aacquire(self, scope: Scope, cost: Cost | None = None, priority: Priority = Priority.NORMAL) -> Grant:
        """Wait (without blocking the loop) until ``cost`` is admitted. Cancelling the task leaves the queue
        and holds no reservation."""
        cost = cost or Cost()
        # Fast path: no queue to respect. Not for stores with I/O: while one task's reservation is in flight,
        # the next must queue behind it, or a small cost could overtake a large one (FIFO).
        if not self._offload and self._nobody_waiting(scope):
            decision = self._try(scope, cost, priority)
            if isinstance(decision, Grant):
                return decision
        loop = asyncio.get_running_loop()
        w = self._enqueue(scope, priority, loop)
        try:
            while True:
                while not self._is_head_or_arm(scope, w, loop):
                    assert w.turn is not None
                    await w.turn
                w.wakeup.clear()
                decision = await self._atry(scope, cost, priority)
                if isinstance(decision, Grant):
                    return decision
                await self.clock.wait_async(w.wakeup, self._timeout(decision))
        finally:
            self._dequeue(scope, w)

    # --------------------------------------------------------------------- after the request was sent
    def settle(self, grant: Grant, actual_tokens: int | None, *, headers_follow: bool = True) -> None:
        """The request finished: correct its token charge to ``actual_tokens`` (None: keep the reservation).

        After a 429 the server counts the request but not its tokens: ``settle(grant, 0)``, then
        :meth:`penalize`. Settle, then :meth:`observe` the response's headers; when there is no response to
        observe (a timeout, a connection error), say ``headers_follow=False`` so that a probe's lease ends now.
        """
        if grant.done:
            return
        grant.done = True
        delta = 0.0 if actual_tokens is None else float(actual_tokens - grant.cost.tokens)
        if delta == 0 and not grant.probe:
            return  # nothing to correct: no round trip
        deltas = (0.0, delta, 0.0, delta, delta)  # the token dimensions (DIMENSIONS order)
        # The probe's lease is released by observing its response, which follows the settle. Releasing it here
        # would let another request through as a second, uncharged probe in between (the server charges it; we
        # would not). If the caller forgets to observe, the lease lapses after PROBE_GRACE.
        hold = (PROBE_GRACE if headers_follow else 0.0) if grant.probe else -1.0
        self._write(grant.scope, self.store.adjust, grant.scope.key, deltas, grant.charged, hold, grant.probe_lease)

    def cancel(self, grant: Grant) -> None:
        """The request was never sent: give the whole reservation back."""
        if grant.done:
            return
        grant.done = True
        deltas = tuple(-c for c in grant.cost.per_dimension())
        hold = 0.0 if grant.probe else -1.0
        self._write(grant.scope, self.store.adjust, grant.scope.key, deltas, grant.charged, hold, grant.probe_lease)

    def observe(
        self,
        scope: Scope,
        headers: RateLimitHeaders | Mapping[str, str],
        sent_at: float,
        grant: Grant | None = None,
        *,
        answered: bool = False,
    ) -> None:
        """Learn from a response's headers (call it on every response, 429s and errors included).

        ``sent_at`` is this limiter's clock when the request was sent; ``grant`` (optional) its grant,
        otherwise the latest grant of the scope made at or before ``sent_at`` is used (pass the grant when
        you have it: with many requests granted at once, the guess can be a later request's). ``answered``:
        the server admitted and answered this request (a 2xx): evidence that widens the learned burst.
        """
        if not isinstance(headers, RateLimitHeaders):
            headers = RateLimitHeaders.parse(headers)
        if grant is None:
            grant = self._grant_before(scope, sent_at)
        obs = interpret(
            headers,
            grant=grant,
            ceiling=self.ceiling,
            safety_margin=self.safety_margin,
            answered=answered,
            start_burst=self.start_burst,
        )
        self._write(scope, self.store.observe, scope.key, obs)

    def _grant_before(self, scope: Scope, sent_at: float) -> Grant | None:
        with self._mu:
            q = self._queues.get(scope.key)
            if q is None or not q.recent:
                return None
            # The latest grant made at or before sent_at; among grants made at that same instant, the first
            # (a later one's accounting would include requests the server has not seen yet).
            i = bisect.bisect_right(q.recent, sent_at, key=lambda e: e[0])
            if not i:
                return None
            j = bisect.bisect_left(q.recent, q.recent[i - 1][0], key=lambda e: e[0])
            return q.recent[j][2]

    def penalize(self, scope: Scope, wait_s: float) -> None:
        """After a 429: admit nothing in ``scope`` for ``wait_s`` seconds (retry-after / "try again in")."""
        if wait_s > 0:
            self._write(scope, self.store.penalize, scope.key, wait_s)

    def refused(
        self,
        grant: Grant,
        wait_s: float,
        *,
        evidence: Iterable[str] | None = None,
        slow_down: bool = False,
    ) -> None:
        """A 429 rate-limit refusal of ``grant``'s request: admit nothing in its scope for ``wait_s``, and learn.

        ``evidence``: the dimensions (``rpm``, ``tpm``...) in which the refusal proves the server enforces a
        shorter window than the headers describe (they showed room, or were missing); ``None``: every minute
        dimension the grant was charged in; empty: none (the headers explain it). ``slow_down``: the server
        said traffic grew too fast; the pace is cut by 0.75 to 0.95, deeper the longer ``wait_s``
        (:func:`ratepilot.limits.core.slow_down_cut`), and recovers by 1/60 per second. Settle the grant first.
        """
        names = None if evidence is None else set(evidence)
        used = tuple(
            u if charged and (names is None or dim.name in names) else -1.0
            for u, charged, dim in zip(grant.used, grant.charged, DIMENSIONS, strict=True)
        )
        refusal = Refusal(max(0.0, wait_s), grant.seq, used, grant.cost.per_dimension(), slow_down)
        self._write(grant.scope, self.store.refuse, grant.scope.key, refusal)

    def state(self, scope: Scope) -> dict[str, DimensionView]:
        """Per known dimension (rpm, tpm, rpd, tpd, ptpm): limit, remaining and seconds until full."""
        st, now = self._read(self.store.load, scope.key)
        return view(st, now) if st is not None else {}

    async def aflush(self) -> None:
        """Wait until the store updates handed over so far are applied: by the I/O thread (one worker, in order),
        and by the store itself when it defers some (Redis sends settles with its next call)."""
        flush = getattr(self.store, "flush", None)
        if self._offload:
            await asyncio.wrap_future(self._io_thread().submit(flush or (lambda: None)))

    # ----------------------------------------------------------------------------------- conveniences
    @contextmanager
    def slot(self, scope: Scope, cost: Cost | None = None, priority: Priority = Priority.NORMAL) -> Iterator[Grant]:
        """``with limiter.slot(scope, cost) as grant:`` cancels the grant if the block raises before settling."""
        grant = self.acquire(scope, cost, priority)
        try:
            yield grant
        except BaseException:
            self.cancel(grant)
            raise

    @asynccontextmanager
    async def aslot(
        self, scope: Scope, cost: Cost | None = None, priority: Priority = Priority.NORMAL
    ) -> AsyncIterator[Grant]:
        grant = await self.aacquire(scope, cost, priority)
        try:
            yield grant
        except BaseException:
            self.cancel(grant)
            raise

    def close(self) -> None:
        """Finish the store updates handed to the I/O thread, then close the store."""
        with self._mu:
            io, self._io = self._io, None
        if io is not None and self._io_pid == os.getpid():
            io.shutdown(wait=True)
        self.store.close()

    def __enter__(self) -> Limiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
