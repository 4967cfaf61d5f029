"""Every grant and budget reservation is settled exactly once, whatever ends the request: a cancellation after
sending, a limiter store that fails, a stream abandoned before its end, a cost the server can never admit."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI, OpenAI

from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.errors import RequestTooLarge
from ratepilot.limits import Limiter
from ratepilot.sim import Simulator

from .helpers import total_requests

MSG = [{"role": "user", "content": "hello there"}]


class _HangsAfterSending(httpx2.AsyncBaseTransport):
    """Sends for real, then never returns the response (until cancelled): the server has counted it."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.hang = False
        self.answered = asyncio.Event()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if not self.hang:
            return response
        await response.aclose()
        self.answered.set()
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_cancelled_after_sending_keeps_the_reservation(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=10, tpm=100_000)
    pilot = Pilot(clock=clock, limiter=Limiter(clock=clock, start_burst=60.0))  # no wait before the second request
    transport = _HangsAfterSending()
    http = httpx2.AsyncClient(transport=transport)
    async with pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key, http_client=http)) as client:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)  # learn the limits
        before = pilot.limits("gpt-4o-mini").limiter["rpm"].remaining
        transport.hang = True
        task = asyncio.ensure_future(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5))
        await transport.answered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await http.aclose()
    assert total_requests(sim) == 2  # the server counted the cancelled request...
    after = pilot.limits("gpt-4o-mini").limiter["rpm"].remaining
    assert after <= before - 1 + 1e-6  # ...and so does the limiter: its capacity is not given back


class _StoreDown:
    """A limiter whose store fails once a request was sent (Redis down, SQLite busy)."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def observe(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            raise ConnectionError("store unreachable")
        self.inner.observe(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            raise ConnectionError("store unreachable")
        self.inner.settle(*args, **kwargs)


def test_a_failing_store_does_not_fail_a_paid_response(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    caplog.set_level(logging.WARNING, logger="ratepilot")
    with Limiter(clock=clock) as limiter:
        flaky = _StoreDown(limiter)
        pilot = Pilot(clock=clock, limiter=flaky, budget_usd=1.0)
        with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)  # learn the limits
            flaky.down = True
            done = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
            assert done.choices[0].message.content
            with client.chat.completions.create(
                model="gpt-4o-mini", messages=MSG, max_tokens=5, stream=True, stream_options={"include_usage": True}
            ) as stream:
                assert list(stream)
    usage = pilot.usage().models["gpt-4o-mini"]
    assert usage.requests == 3 and usage.unmetered == 0
    assert pilot.budget is not None and pilot.budget.reserved_usd == 0
    assert "limiter settle failed" in caplog.text and "limiter observe failed" in caplog.text
    assert api_key not in caplog.text


def test_a_dropped_stream_settles_its_grant_and_budget(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    with Limiter(clock=clock) as limiter:
        pilot = Pilot(clock=clock, limiter=limiter, budget_usd=1.0)
        settled: list[int | None] = []
        real_settle = limiter.settle

        def spy(grant: Any, actual: int | None, **kw: Any) -> None:
            settled.append(actual)
            real_settle(grant, actual, **kw)

        limiter.settle = spy  # type: ignore[method-assign]
        with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MSG, max_tokens=5, stream=True, stream_options={"include_usage": True}
            )
            assert pilot.budget is not None and pilot.budget.reserved_usd > 0
            del stream  # abandoned: never consumed, never closed
            gc.collect()
            assert settled == [None]  # settled, keeping the admission estimate
            assert pilot.budget.reserved_usd == 0
            assert pilot.usage().models["gpt-4o-mini"].unmetered == 1


def test_cost_too_large_learned_by_a_shared_limiter_is_request_too_large(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=60, tpm=1_000)
    with Limiter(clock=clock) as limiter:
        first, second = Pilot(clock=clock, limiter=limiter), Pilot(clock=clock, limiter=limiter)
        with first.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)  # the limiter learns
        with (
            second.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as other,
            pytest.raises(RequestTooLarge) as info,
        ):
            other.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2_000)
    assert total_requests(sim) == 1  # refused before sending
    assert info.value.limit == 1_000 and info.value.requested == 2_000
