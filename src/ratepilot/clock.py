"""Injected time.

Every component that waits takes a :class:`Clock`. Production code uses :class:`SystemClock`; tests use
:class:`FakeClock` (modelled on trio's ``MockClock``), whose time only moves when a test advances it, or
when a waiter "sleeps" on it (``autojump``), so no test ever waits for a rate limit in real time.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic seconds plus the two ways of waiting on it."""

    def now(self) -> float:
        """Monotonic seconds (arbitrary origin)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` of this clock's time."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...

    def wall(self) -> float:
        """Unix time in seconds (for timestamps shown to people and in API objects)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` for intervals, ``time.time`` for timestamps."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to.

    ``autojump=True`` (the default) makes ``sleep``/``asleep`` advance time by the requested amount at once,
    which is what single-threaded tests of waiting logic want: the code under test "waits" 20 s and the
    test observes that it did, in microseconds. With ``autojump=False`` sleepers block until another thread
    or task calls :meth:`advance` past their deadline (for tests that interleave several waiters).
    """

    def __init__(self, start: float = 1_000.0, *, wall_start: float = 1_767_225_600.0, autojump: bool = True):
        self._now = start
        self._wall_offset = wall_start - start
        self.autojump = autojump
        self.slept: list[float] = []  # every sleep requested, for assertions
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
        self._wake_async()

    def _wake_async(self) -> None:
        while self._async_waiters and self._async_waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._async_waiters)
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(_resolve, fut)

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
        self._seq += 1
        heapq.heappush(self._async_waiters, (self._now + seconds, self._seq, fut))
        await fut


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
