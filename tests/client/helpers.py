"""Small readers of the simulator's stats, and a clock for concurrent async tests."""

from __future__ import annotations

import asyncio

import httpx2

from ratepilot.clock import FakeClock
from ratepilot.sim import Simulator


def total_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"]["total"])


def sim_429s(sim: Simulator) -> int:
    return int(sim.stats()["rate_limited"]["total"])


def billed_usd(sim: Simulator) -> float:
    return float(sum(u["cost_usd"] for u in sim.stats()["usage"].values()))


class WireClock(FakeClock):
    """A :class:`FakeClock` for concurrent async tests against a live simulator: time never jumps while a
    request is on the wire.

    With plain autojump, one task's ``asleep(12)`` moves the shared clock at once even while other tasks'
    requests, granted by the limiter moments earlier, are still travelling over the real socket to the
    simulator's thread: a waiter chain can move time by minutes before they arrive, so requests granted 12 s
    apart reach the server in one burst. Real time cannot do that (a request's latency is milliseconds, the
    limiter's intervals seconds), so this clock lets time jump only once every request sent through
    :meth:`transport` has its response headers, i.e. the server has admitted (or refused) it. Sleeps are
    deadlines: a sleeper that asked for ``s`` at ``t`` wakes at ``max(now, t + s)``, as with a real clock,
    instead of adding ``s`` on top of the other sleepers' jumps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    def transport(self, inner: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncBaseTransport:
        """An HTTP transport that counts the requests on the wire (wrap it in the client under test)."""
        return _CountingTransport(self, inner or httpx2.AsyncHTTPTransport())

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    def _sent(self) -> None:
        self.in_flight += 1
        self._event().clear()

    def _answered(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._event().set()

    async def asleep(self, seconds: float) -> None:
        deadline = self.now() + seconds
        self.slept.append(seconds)
        while self.in_flight:
            await self._event().wait()
        if deadline > self.now():
            self.advance(deadline - self.now())
        await asyncio.sleep(0)


class _CountingTransport(httpx2.AsyncBaseTransport):
    def __init__(self, clock: WireClock, inner: httpx2.AsyncBaseTransport) -> None:
        self.clock = clock
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.clock._sent()  # before the first await: counted in the same step as the limiter's grant
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.clock._answered()

    async def aclose(self) -> None:
        await self.inner.aclose()
