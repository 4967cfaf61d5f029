"""pilot.wrap(): a real SDK client, unchanged for the user, with every call throttled through the pilot."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from ratepilot.client import AsyncPilotTransport, Pilot, PilotTransport
from ratepilot.clock import FakeClock
from ratepilot.limits import Limiter
from ratepilot.sim import SimConfig, Simulator

from .helpers import WireClock, sim_429s, total_requests

MSG = [{"role": "user", "content": "hello there"}]


def test_raw_headers_workflow_unchanged(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    sim = make_sim(rpm=60, tpm=100_000)
    pilot = Pilot(clock=clock)
    with OpenAI(base_url=sim.base_url, api_key=api_key) as original, pilot.wrap(original) as client:
        assert isinstance(client, OpenAI) and client.max_retries == 0
        assert isinstance(client._client._transport, PilotTransport)
        assert not isinstance(original._client._transport, PilotTransport)  # the user's client is untouched
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        assert raw.status_code == 200
        assert raw.headers["x-ratelimit-remaining-requests"] == "59"
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert completion.usage is not None
        second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        assert second.headers["x-ratelimit-remaining-requests"] == "58"
        assert second.headers["x-ratepilot-attempts"] == "1" and second.headers["x-ratepilot-waited-ms"] == "0"
    usage = pilot.usage()
    assert usage.requests == 2 and usage.retries == 0
    assert usage.models["gpt-4o-mini"].completion_tokens == 2 * completion.usage.completion_tokens


def test_few_rpm_no_429_and_the_wait_is_on_the_clock(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=3, tpm=100_000)
    pilot = Pilot(clock=clock)
    start = clock.now()
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for _ in range(9):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert sim_429s(sim) == 0
    assert total_requests(sim) == 9
    # 3 at once, then one every 20 s: 6 more requests take 120 s of (fake) time.
    assert clock.now() - start == pytest.approx(120.0, abs=1.0)
    assert pilot.usage().wait_seconds == pytest.approx(120.0, abs=1.0)
    state = pilot.limits("gpt-4o-mini")
    assert state.server["requests"].limit == 3
    assert state.limiter["rpm"].server_limit == 3


async def test_async_client(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    sim = make_sim(rpm=2, tpm=100_000)
    pilot = Pilot(clock=clock)
    async with pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        assert isinstance(client._client._transport, AsyncPilotTransport)
        for _ in range(4):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MSG, max_tokens=5
            )
            assert raw.parse().choices[0].message.content
        emb = await client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d e"])
        assert len(emb.data) == 2
    assert sim_429s(sim) == 0
    assert pilot.usage().models["text-embedding-3-small"].prompt_tokens == emb.usage.prompt_tokens


def test_legacy_httpx_client(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    sim = make_sim(rpm=2, tpm=100_000)
    pilot = Pilot(clock=clock)
    with (
        httpx.Client() as legacy,
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key, http_client=legacy)) as client,
    ):
        assert isinstance(client._client, httpx.Client) and client._client is not legacy
        assert isinstance(client._client._transport, httpx.BaseTransport)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        client.models.list()
    assert sim_429s(sim) == 0
    assert pilot.usage().requests == 4


async def test_legacy_httpx_async_client(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    sim = make_sim(rpm=60, tpm=100_000)
    pilot = Pilot(clock=clock)
    async with (
        httpx.AsyncClient() as legacy,
        pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key, http_client=legacy)) as client,
    ):
        done = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        assert done.choices[0].message.content
    assert pilot.usage().models["gpt-4o-mini"].requests == 1


def test_polls_cost_one_request_in_the_requests_scope(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=2, tpm=100_000)
    pilot = Pilot(clock=clock)
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for _ in range(5):
            client.models.list()
    assert sim_429s(sim) == 0
    state = pilot.limits("requests")
    assert state.server["requests"].limit == 2
    assert pilot.usage().models == {}  # no tokens, no cost


def test_priority_header_is_stripped_and_user_transport_kept(clock: FakeClock, api_key: str) -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"object": "list", "data": []})

    pilot = Pilot(clock=clock)
    with (
        httpx2.Client(transport=httpx2.MockTransport(handler)) as http,
        pilot.wrap(OpenAI(base_url="http://mock.test/v1", api_key=api_key, http_client=http)) as client,
    ):
        client.models.list(extra_headers={"x-ratepilot-priority": "low"})
        assert isinstance(http._transport, httpx2.MockTransport)  # the user's client is not modified
    assert len(seen) == 1
    assert "x-ratepilot-priority" not in seen[0].headers
    assert seen[0].headers["authorization"] == f"Bearer {api_key}"


def test_wrap_rejects_other_objects(clock: FakeClock) -> None:
    with pytest.raises(TypeError, match="OpenAI"):
        Pilot(clock=clock).wrap(object())


def test_rewrapping_does_not_stack_transports(clock: FakeClock, api_key: str) -> None:
    first, second = Pilot(clock=clock), Pilot(clock=clock)
    with (
        httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json={}))) as http,
        OpenAI(base_url="http://mock.test/v1", api_key=api_key, http_client=http) as base,
    ):
        twice = second.wrap(first.wrap(base))
        transport = twice._client._transport
        assert isinstance(transport, PilotTransport) and transport.pilot is second
        assert isinstance(transport.inner, httpx2.MockTransport)
    assert openai.OpenAI is OpenAI


async def test_concurrent_async_calls_share_the_limits(api_key: str) -> None:
    import asyncio

    # A WireClock, not the autojump FakeClock: with 15 tasks sharing one clock, the waiter at the head of the
    # limiter's queue would jump time while requests granted just before are still on their way to the
    # simulator's thread, and they would arrive together, 12 s apart in the limiter's time but not the server's.
    clock = WireClock()
    start = clock.now()
    with Simulator(SimConfig(rpm=5, tpm=100_000), clock=clock) as sim:
        pilot = Pilot(clock=clock)
        async with (
            httpx2.AsyncClient(transport=clock.transport()) as http,
            pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key, http_client=http)) as client,
        ):

            async def one(i: int) -> str:
                done = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=3
                )
                return done.choices[0].message.content or ""

            answers = await asyncio.gather(*(one(i) for i in range(15)))
        assert all(answers)
        assert (total_requests(sim), sim_429s(sim)) == (15, 0)
        assert clock.now() - start >= 12 * (15 - 5)  # paced by the server's RPM, not sent in a burst


@pytest.mark.parametrize(
    ("value", "expected"), [("low", "LOW"), ("HIGH", "HIGH"), ("normal", "NORMAL"), ("x", "NORMAL")]
)
def test_priority_header_values_reach_the_limiter(clock: FakeClock, api_key: str, value: str, expected: str) -> None:
    from ratepilot.client.passthrough import PassThroughLimiter
    from ratepilot.limits import Cost, Grant, Priority, Scope

    asked: list[Priority] = []

    class Recording(PassThroughLimiter):
        def acquire(self, scope: Scope, cost: Cost, priority: Priority = Priority.NORMAL) -> Grant:
            asked.append(priority)
            return super().acquire(scope, cost, priority)

    pilot = Pilot(clock=clock, limiter=Recording())
    with (
        httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json={"data": []}))) as http,
        pilot.wrap(OpenAI(base_url="http://mock.test/v1", api_key=api_key, http_client=http)) as client,
    ):
        client.models.list(extra_headers={"x-ratepilot-priority": value})
    assert asked == [Priority[expected]]


def test_threads_share_one_wrapped_client(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sim = make_sim(rpm=6, tpm=100_000)
    # The whole minute trusted at once (start_burst=60): with an autojumping fake clock shared by four threads, a
    # request can be "in flight" while other threads' sleeps move the clock, which the learned burst's slow
    # start does not model (it is tested on its own in tests/limits/test_burst.py).
    pilot = Pilot(clock=clock, limiter=Limiter(clock=clock, start_burst=60.0))
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:

        def one(i: int) -> str:
            done = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"t{i}"}], max_tokens=3
            )
            return done.choices[0].message.content or ""

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(16)))
    assert all(answers)
    assert total_requests(sim) == 16 and sim_429s(sim) == 0


@pytest.mark.parametrize("estimate", ["server", "tokenizer"])
def test_token_estimate_decides_what_the_limiter_reserves(clock: FakeClock, api_key: str, estimate: str) -> None:
    from ratepilot.client.passthrough import PassThroughLimiter
    from ratepilot.limits import Cost, Grant, Priority, Scope
    from ratepilot.protocol.tokens import reservation_tokens

    reserved: list[int] = []

    class Recording(PassThroughLimiter):
        def acquire(self, scope: Scope, cost: Cost, priority: Priority = Priority.NORMAL) -> Grant:
            reserved.append(cost.tokens)
            return super().acquire(scope, cost, priority)

    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "count these words " * 20}],
        "max_tokens": 3,
    }
    ok = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    pilot = Pilot(clock=clock, limiter=Recording(), token_estimate=estimate)
    with (
        httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json=ok))) as http,
        pilot.wrap(OpenAI(base_url="http://mock.test/v1", api_key=api_key, http_client=http)) as client,
    ):
        client.chat.completions.create(**body)  # type: ignore[call-overload]
    assert reserved == [reservation_tokens("/v1/chat/completions", body, estimate)]
    with pytest.raises(ValueError, match="token_estimate"):
        Pilot(token_estimate="guess")
