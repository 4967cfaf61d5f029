"""Injected time.

Every component that waits takes a :class:`Clock`. Production code uses :class:`SystemClock`; tests use
:class:`FakeClock` (modelled on trio's ``MockClock``), whose time only moves when a test advances it, or
when a waiter "sleeps" on it (``autojump``), so no test ever waits for a rate limit in real time.

A clock offers two kinds of waiting, each sync and async: ``sleep``/``asleep`` for a duration, and
``wait``/``wait_async`` for a :class:`Wakeup` or a deadline, whichever comes first (the limiter's head waiting
for capacity or a settle, a waiter for a webhook). Components never branch on which clock they were given:
the waiting code is the same in tests and in production, only the clock differs.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock", "Wakeup", "any_of"]


class Wakeup:
    """A flag that ends a clock's :meth:`~Clock.wait` / :meth:`~Clock.wait_async` when set.

    Set it from any thread or event loop; it wakes threads and tasks on any loop. It stays set until
    :meth:`clear`, so a wake-up that lands before the wait begins (or between two waits) is not lost: the
    next wait returns at once. (``threading.Event`` wakes no asyncio task and ``asyncio.Event`` belongs to one
    loop and is not thread-safe; the waits here need both.)
    """

    __slots__ = ("_flag", "_listeners", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flag = False
        self._listeners: list[Callable[[], object]] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._lock:
            if self._flag:
                return
            self._flag = True
            listeners = list(self._listeners)
        for notify in listeners:  # outside the lock: a listener may take other locks (a clock's, a loop's)
            notify()

    def clear(self) -> None:
        with self._lock:
            self._flag = False

    def listen(self, notify: Callable[[], object]) -> bool:
        """Call ``notify`` (on the setting thread) each time the flag is set, until :meth:`unlisten`. Returns
        True, registering nothing, if it is already set: checked under the same lock as :meth:`set`, so no
        wake-up falls between the check and the registration. For clocks and :func:`any_of`."""
        with self._lock:
            if self._flag:
                return True
            self._listeners.append(notify)
            return False

    def unlisten(self, notify: Callable[[], object]) -> None:
        with self._lock, suppress(ValueError):  # not listening (any more): nothing to undo
            self._listeners.remove(notify)


@contextmanager
def any_of(*wakeups: Wakeup) -> Iterator[Wakeup]:
    """A :class:`Wakeup` set as soon as any of ``wakeups`` is (or already is), for one wait on several things:
    ``with any_of(a, b) as either: clock.wait(either, 30)``. It stops following them when the block ends."""
    either = Wakeup()
    followed: list[Wakeup] = []
    try:
        for w in wakeups:
            if w.listen(either.set):
                either.set()
                break
            followed.append(w)
        yield either
    finally:
        for w in followed:
            w.unlisten(either.set)


def _block(wakeup: Wakeup, seconds: float | None) -> bool:
    """Block this thread until ``wakeup`` is set or ``seconds`` of real time pass; whether it is set."""
    woken = threading.Event()
    notify = woken.set
    if wakeup.listen(notify):
        return True
    try:
        woken.wait(seconds)
    finally:
        wakeup.unlisten(notify)
    return wakeup.is_set()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _alone() -> bool:
    """This is the process's only thread: no other thread could set a wakeup during a fake clock's idle (and a
    fake clock's time is never shared with another process), so waiting real time for one would be for nobody."""
    return threading.active_count() == 1


def _resolver(fut: asyncio.Future[None]) -> Callable[[], None]:
    """A callable that resolves ``fut`` from any thread (a Wakeup listener)."""
    loop = fut.get_loop()

    def notify() -> None:
        with suppress(RuntimeError):  # the loop is closed: its waiter is gone, nothing to wake
            loop.call_soon_threadsafe(_resolve, fut)

    return notify


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic seconds plus the ways of waiting on it.

    ``is_real_time``: the clock is the real passage of time, so another source of real time (a Redis server's
    ``TIME``, shared by every host) may stand in for it; a test's clock may not be replaced.
    """

    is_real_time: bool

    def now(self) -> float:
        """Monotonic seconds (arbitrary origin)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` of this clock's time."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...

    def wait(self, wakeup: Wakeup, timeout: float | None) -> bool:
        """Block until ``wakeup`` is set or ``timeout`` seconds of this clock's time pass (None: no deadline).
        Returns whether it is set (at once if it already was)."""
        ...

    async def wait_async(self, wakeup: Wakeup, timeout: float | None) -> bool:
        """:meth:`wait` for a task: suspends it, never the loop."""
        ...

    def wall(self) -> float:
        """Unix time in seconds (for timestamps shown to people and in API objects)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` for intervals, ``time.time`` for timestamps."""

    is_real_time = True

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wait(self, wakeup: Wakeup, timeout: float | None) -> bool:
        if wakeup.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        return _block(wakeup, timeout)

    async def wait_async(self, wakeup: Wakeup, timeout: float | None) -> bool:
        if wakeup.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        notify = _resolver(fut)
        if wakeup.listen(notify):
            return True
        timer = loop.call_later(timeout, _resolve, fut) if timeout is not None else None
        try:
            await fut
        finally:
            wakeup.unlisten(notify)
            if timer is not None:
                timer.cancel()
        return wakeup.is_set()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to.

    ``autojump=True`` (the default) makes ``sleep``/``asleep`` advance time by the requested amount at once,
    which is what single-threaded tests of waiting logic want: the code under test "waits" 20 s and the
    test observes that it did, in microseconds. With ``autojump=False`` sleepers block until another thread
    or task calls :meth:`advance` past their deadline (for tests that interleave several waiters).

    ``wait``/``wait_async`` end as soon as the wakeup is set, whoever sets it. With ``autojump=False`` they
    otherwise block until the clock is advanced to the deadline. With ``autojump`` the waiter moves time on
    itself, ``wait_tick`` seconds at a time, looking at the wakeup between ticks (sleeping each tick, so
    subclasses that customise sleeping apply; ``slept`` records the ticks). A wait that fits in one tick jumps
    straight to its deadline, as a sleep does. Before a tick with more of the wait to come, the waiter gives
    other threads and tasks up to ``wait_idle`` *real* seconds to set the wakeup (trio's
    ``autojump_threshold``): a webhook delivered over real HTTP, or a request's response, arrives before time
    runs on, and an event due at some time of this clock ends the wait within a tick of it, not at the
    deadline. So time runs at most ``wait_tick / wait_idle`` (1000) times faster than real time during such a
    wait, and a wait with no deadline keeps ticking until the wakeup is set. In a process with no other thread
    there is nobody to give real time to: the idle is skipped (a task still gives its loop's other tasks a
    turn), so a single-threaded test's long waits cost no real time.
    """

    is_real_time = False

    def __init__(
        self,
        start: float = 1_000.0,
        *,
        wall_start: float = 1_767_225_600.0,
        autojump: bool = True,
        wait_tick: float = 1.0,
        wait_idle: float = 0.001,
    ):
        if not (wait_tick > 0 and wait_idle >= 0):
            raise ValueError(f"wait_tick must be positive and wait_idle not negative, got {wait_tick}, {wait_idle}")
        self._now = start
        self._wall_offset = wall_start - start
        self.autojump = autojump
        self.wait_tick = wait_tick
        self.wait_idle = wait_idle
        self.slept: list[float] = []  # every sleep requested (and every tick of an autojumping wait), for assertions
        self._cond = threading.Condition()
        self._async_waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()
            due: list[asyncio.Future[None]] = []
            while self._async_waiters and self._async_waiters[0][0] <= self._now:
                due.append(heapq.heappop(self._async_waiters)[2])
        for fut in due:
            if not fut.done():
                _resolver(fut)()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _at(self, deadline: float, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` once the clock is advanced to ``deadline`` (autojump=False)."""
        with self._cond:
            self._seq += 1
            heapq.heappush(self._async_waiters, (deadline, self._seq, fut))

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            return
        if self.autojump:
            self.advance(seconds)
            return
        with self._cond:
            deadline = self._now + seconds
            while self._now < deadline:
                self._cond.wait()

    async def asleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.autojump:
            if seconds > 0:
                self.advance(seconds)
            await asyncio.sleep(0)
            return
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._at(self._now + seconds, fut)
        await fut

    # -- waiting for a wakeup or a deadline (see the class docstring)

    def wait(self, wakeup: Wakeup, timeout: float | None) -> bool:
        if wakeup.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        deadline = math.inf if timeout is None else self._now + timeout
        if self.autojump:
            for idle, seconds in self._jumps(wakeup, timeout):
                if idle:
                    self._idle(wakeup)
                else:
                    self.sleep(seconds)
            return wakeup.is_set()
        notify = self._notify
        if wakeup.listen(notify):
            return True
        try:
            with self._cond:
                while not wakeup.is_set() and self._now < deadline:
                    self._cond.wait()
        finally:
            wakeup.unlisten(notify)
        return wakeup.is_set()

    def _jumps(self, wakeup: Wakeup, timeout: float | None) -> Iterator[tuple[bool, float]]:
        """An autojumping wait as steps, for both drivers: ``(True, 0)`` give other threads or tasks their idle
        turn, ``(False, s)`` advance the clock by ``s``. Tick by tick, so an event due mid-wait (another thread's
        advance, a delivery) ends it there, not at the deadline; it ends once ``wakeup`` is set or the time is up."""
        deadline = math.inf if timeout is None else self._now + timeout
        left = math.inf if timeout is None else timeout  # exactly: a wait within a tick sleeps its timeout
        while not wakeup.is_set() and left > 0:
            if left <= self.wait_tick:  # the last tick: to the deadline, where the wait ends either way
                yield False, left
                return
            yield True, 0.0
            if wakeup.is_set():
                return
            yield False, self.wait_tick
            left = deadline - self._now

    def _idle(self, wakeup: Wakeup) -> None:
        """Give other threads up to ``wait_idle`` real seconds to set ``wakeup``."""
        if self.wait_idle > 0 and not _alone():
            _block(wakeup, self.wait_idle)

    async def wait_async(self, wakeup: Wakeup, timeout: float | None) -> bool:
        if wakeup.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        deadline = math.inf if timeout is None else self._now + timeout
        if self.autojump:
            for idle, seconds in self._jumps(wakeup, timeout):
                if idle:
                    await self._aidle(wakeup)
                else:
                    await self.asleep(seconds)
            return wakeup.is_set()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        notify = _resolver(fut)
        if wakeup.listen(notify):
            return True
        if timeout is not None:
            self._at(deadline, fut)
        try:
            await fut
        finally:
            wakeup.unlisten(notify)
        return wakeup.is_set()

    async def _aidle(self, wakeup: Wakeup) -> None:
        """:meth:`_idle` for a task: other tasks of its loop run meanwhile (at least one turn each)."""
        if self.wait_idle <= 0 or _alone():
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        notify = _resolver(fut)
        if wakeup.listen(notify):
            return
        try:
            await asyncio.wait({fut}, timeout=self.wait_idle)
        finally:
            wakeup.unlisten(notify)
            fut.cancel()
