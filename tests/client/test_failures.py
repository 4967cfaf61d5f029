"""Failures through a wrapped client: retried when they can succeed, one HTTP call when they cannot."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.errors import QuotaExhausted, RequestTooLarge, RetriesExhausted
from ratepilot.limits import Limiter
from ratepilot.protocol.errors import server_error
from ratepilot.retry import RetryPolicy
from ratepilot.sim import Simulator

from .helpers import sim_429s, total_requests

MSG = [{"role": "user", "content": "hello there"}]
OK_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}


def _scripted(*steps: httpx2.Response | Exception) -> tuple[httpx2.MockTransport, list[httpx2.Request]]:
    """A transport that plays ``steps`` in order (an exception is raised, a response returned)."""
    sent: list[httpx2.Request] = []
    it: Iterator[httpx2.Response | Exception] = iter(steps)

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        step = next(it)
        if isinstance(step, Exception):
            raise step
        return step

    return httpx2.MockTransport(handler), sent


def _client(pilot: Pilot, transport: httpx2.MockTransport, api_key: str) -> OpenAI:
    http = httpx2.Client(transport=transport)
    return pilot.wrap(OpenAI(base_url="http://mock.test/v1", api_key=api_key, http_client=http))


def test_insufficient_quota_one_request_then_quota_exhausted(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=60, tpm=100_000, credit_usd=0.0)
    pilot = Pilot(clock=clock)
    with (
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client,
        pytest.raises(QuotaExhausted) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert total_requests(sim) == 1  # exactly one HTTP request reached the simulator
    assert info.value.code == "insufficient_quota"
    assert "plan and billing" in str(info.value)
    assert pilot.usage().retries == 0


def test_another_billing_stop_code_is_one_request_then_quota_exhausted(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    """The newer billing stops (here credit_balance_exhausted) are never retried either."""
    sim = make_sim(credit_usd=0.0, quota_error_code="credit_balance_exhausted")
    pilot = Pilot(clock=clock)
    with (
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client,
        pytest.raises(QuotaExhausted) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert total_requests(sim) == 1
    assert info.value.code == "credit_balance_exhausted"
    assert pilot.usage().retries == 0


async def test_insufficient_quota_async(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    sim = make_sim(credit_usd=0.0)
    pilot = Pilot(clock=clock)
    async with pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        with pytest.raises(QuotaExhausted):
            await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert total_requests(sim) == 1


def test_request_too_large_server_side_then_before_sending(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=60, tpm=1_000)
    pilot = Pilot(clock=clock)
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)  # learns TPM = 1000
        assert total_requests(sim) == 1
        with pytest.raises(RequestTooLarge) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2_000)
        assert total_requests(sim) == 1  # refused before sending
        assert info.value.limit == 1_000 and info.value.requested == 2_000
        # A fresh pilot knows nothing yet: the server refuses it, once, and it is never retried.
        fresh = Pilot(clock=clock)
        with fresh.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as other, pytest.raises(RequestTooLarge):
            other.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2_000)
        assert total_requests(sim) == 2


def test_429_from_foreign_traffic_is_retried_after_the_hint(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=3, tpm=100_000)
    # Trusting the whole minute at once (start_burst=60), the limiter sends into the foreign requests' use.
    pilot = Pilot(clock=clock, limiter=Limiter(clock=clock, start_burst=60.0))
    with (
        OpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0) as foreign,
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)  # learn the limits
        for _ in range(2):  # someone else uses the rest of the minute
            foreign.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        before = clock.now()
        done = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)  # no exception
        assert done.choices[0].message.content
        assert clock.now() > before
    assert sim_429s(sim) == 1  # the limiter could not know about the foreign requests: one 429, then a wait
    usage = pilot.usage()
    assert usage.rate_limited == sim_429s(sim) and usage.retries == usage.rate_limited


def test_5xx_and_connection_errors_are_retried(clock: FakeClock, api_key: str) -> None:
    transport, sent = _scripted(
        httpx2.Response(500, json=server_error()),
        httpx2.ConnectError("refused"),
        httpx2.ReadTimeout("slow"),
        httpx2.Response(503, json=server_error(overloaded=True)),
        httpx2.Response(200, json=OK_BODY),
    )
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(5))
    with _client(pilot, transport, api_key) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        done = raw.parse()
    assert done.choices[0].message.content == "ok"
    assert len(sent) == 5
    assert raw.headers["x-ratepilot-attempts"] == "5" and int(raw.headers["x-ratepilot-waited-ms"]) >= 0
    usage = pilot.usage()
    assert (usage.requests, usage.retries, usage.errors) == (5, 4, 4)
    assert usage.models["gpt-4o-mini"].prompt_tokens == 9
    assert len(clock.slept) >= 4


def test_retries_exhausted_carries_the_last_error(clock: FakeClock, api_key: str) -> None:
    transport, sent = _scripted(*[httpx2.Response(503, json=server_error(overloaded=True)) for _ in range(3)])
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(5, max_attempts=3))
    with _client(pilot, transport, api_key) as client, pytest.raises(RetriesExhausted) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert len(sent) == 3
    assert info.value.attempts == 3 and info.value.last_status == 503
    assert "overloaded" in info.value.last_message


def test_connection_errors_exhausted_chain_the_exception(clock: FakeClock, api_key: str) -> None:
    transport, sent = _scripted(*[httpx2.ConnectError("refused") for _ in range(2)])
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(5, max_attempts=2))
    with _client(pilot, transport, api_key) as client, pytest.raises(RetriesExhausted) as info:
        client.models.list()
    assert len(sent) == 2
    assert isinstance(info.value.last_error, httpx2.ConnectError)
    assert info.value.__cause__ is info.value.last_error


@pytest.mark.parametrize(
    ("status", "code", "sdk_error"),
    [
        (400, "context_length_exceeded", openai.BadRequestError),
        (401, "invalid_api_key", openai.AuthenticationError),
        (403, None, openai.PermissionDeniedError),
        (404, "model_not_found", openai.NotFoundError),
    ],
)
def test_client_errors_one_call_and_the_sdk_error_type(
    clock: FakeClock, api_key: str, status: int, code: str | None, sdk_error: type[Exception]
) -> None:
    body = {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": code}}
    transport, sent = _scripted(httpx2.Response(status, json=body))
    pilot = Pilot(clock=clock)
    with _client(pilot, transport, api_key) as client, pytest.raises(sdk_error):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert len(sent) == 1
    assert pilot.usage().retries == 0


def test_model_not_found_from_the_simulator(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    sim = make_sim(rpm=60)
    with (
        Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert total_requests(sim) == 1


def test_simulator_faults_are_absorbed(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    from ratepilot.sim import FaultConfig

    sim = make_sim(rpm=1_000, tpm=1_000_000, seed=3, faults=FaultConfig(error_500=0.2, error_503=0.1, drop=0.15))
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(11, max_attempts=10))
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for i in range(20):
            done = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3
            )
            assert done.choices[0].message.content
    usage = pilot.usage()
    assert usage.retries > 0 and usage.requests == 20 + usage.retries
    assert usage.requests == total_requests(sim)
    assert usage.models["gpt-4o-mini"].requests == 20


def test_works_without_rate_limit_headers(make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str) -> None:
    from ratepilot.sim import FaultConfig

    sim = make_sim(rpm=3, tpm=100_000, faults=FaultConfig(missing_headers=1.0, missing_headers_on_429=True))
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(2))
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for i in range(7):  # no headers: 429s are retried after the "try again in" wait
            done = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"h{i}"}], max_tokens=3
            )
            assert done.choices[0].message.content
    usage = pilot.usage()
    assert usage.models["gpt-4o-mini"].requests == 7
    assert usage.rate_limited == sim_429s(sim) and usage.retries == usage.rate_limited
    # Never in a header, but in the 429's own words ("on requests per min (RPM): Limit 3, Used 3, ...").
    state = pilot.limits("gpt-4o-mini")
    assert set(state.server) == {"requests"} and state.server["requests"].limit == 3
    assert state.limiter["rpm"].server_limit == 3


@pytest.mark.parametrize("status", [429, 503])
def test_a_slow_down_is_retried_and_slows_the_pace(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, status: int
) -> None:
    """Through the wrapped SDK: a ramp-limited simulator answers slow_down (a 429, or a 503 as older servers
    sent it); the request is not lost, the limiter's pace is cut (and recovers), and nothing else in the
    exchange treats it as a fault."""
    # 600 RPM with a 10 s ramp window and floor 0.1: 10 requests pass in the first window, the 11th is slow_down.
    sim = make_sim(rpm=600, tpm=1_000_000, ramp_factor=2.0, ramp_window_s=10.0, ramp_floor=0.1, slow_down_status=status)
    limiter = Limiter(clock=clock, start_burst=60.0)
    pilot = Pilot(clock=clock, limiter=limiter, retry=RetryPolicy(max_attempts=1))  # faults would give up at once
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for _ in range(12):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert sim.stats()["rate_limited"]["slow_down"] >= 1
    assert pilot.usage().requests == 12 + sim_429s(sim)  # every refusal retried: nothing abandoned
    (scope_key,) = limiter._queues  # the one scope: this key and model
    st, _ = limiter.store.load(scope_key)
    assert st is not None and st.pseq > 0  # the pace was cut by the slow_down


def test_token_headers_of_minus_one_are_read_as_absent(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    """Token headers that read -1 (Azure's Responses API has sent them): the request limit is learned from the
    headers, the token limit from the 429s' words, and every request is answered."""
    from ratepilot.sim import FaultConfig

    sim = make_sim(rpm=1_000, tpm=400, faults=FaultConfig(unknown_token_headers=1.0, headers_on_429_p=0.0))
    pilot = Pilot(clock=clock, retry=RetryPolicy(max_attempts=1))  # a misread header must not look like a fault
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for i in range(8):  # ~60 tokens each: 400 TPM refuses some of them
            text = f"t{i} " * 40
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}], max_tokens=5
            )
    assert pilot.usage().models["gpt-4o-mini"].requests == 8
    state = pilot.limits("gpt-4o-mini")
    # The requests from the successes' headers; the tokens only from the refusals' words (the view keeps both).
    assert state.server["requests"].limit == 1_000 and state.server["tokens"].limit == 400
    assert sim_429s(sim) >= 1 and state.limiter["tpm"].server_limit == 400


def test_a_project_token_limit_is_learned_from_the_project_headers(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    """The key's project allows 2,000 TPM, its organization 1,000,000: the limiter learns the project's limit
    from the x-ratelimit-*-project-tokens headers (dimension ptpm), paces to it, and every request is answered."""
    from ratepilot.sim import KeySpec, Limits

    sim = make_sim(
        rpm=1_000,
        tpm=1_000_000,
        keys={api_key: KeySpec("org-client", "proj_a")},
        projects={"proj_a": Limits(tpm=2_000)},
        settle_actual_tokens=False,  # each request keeps its 100 tokens: 3,000 in all, over the project's minute
    )
    pilot = Pilot(clock=clock, retry=RetryPolicy(max_attempts=1))  # a misread refusal must not look like a fault
    started = clock.now()
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for i in range(30):
            done = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"p{i}"}], max_tokens=100
            )
            assert done.choices[0].message.content
    assert pilot.usage().models["gpt-4o-mini"].requests == 30
    assert clock.now() - started >= 30.0  # 1,000 tokens past the project's 2,000 refill at 2,000 per minute
    state = pilot.limits("gpt-4o-mini")
    assert state.server["project_tokens"].limit == 2_000 and state.server["tokens"].limit == 1_000_000
    assert state.limiter["ptpm"].server_limit == 2_000 and state.limiter["tpm"].server_limit == 1_000_000
    assert sim.stats()["rate_limited"]["project"] == sim_429s(sim) <= 2  # paced by the project's limit
