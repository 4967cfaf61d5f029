"""Rate limits through the official SDK: headers, the N+1th request's exact 429 body, quota, too large."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import openai
import pytest

from ratepilot.clock import FakeClock
from ratepilot.protocol.errors import (
    ErrorClass,
    LimitKind,
    classify,
    insufficient_quota_error,
    rate_limit_error,
    request_too_large_error,
)
from ratepilot.protocol.headers import RateLimitHeaders, parse_duration
from ratepilot.protocol.tokens import admission_cost, count_text, estimate_prompt_tokens
from ratepilot.sim import SimConfig, Simulator

from .conftest import user

MODEL = "gpt-4o-mini"
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def _chat(client: openai.OpenAI, text: str = "hello", **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=MODEL, messages=user(text), **kwargs)


def _error(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = exc.value.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body  # type: ignore[no-any-return]


def test_headers_present_and_consistent(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=60, tpm=10_000)
    client = sync_client(sim)
    remaining = []
    for _ in range(3):
        raw = _chat(client)
        for name in (*RATE_HEADERS, "x-request-id", "openai-processing-ms", "openai-organization", "openai-version"):
            assert raw.headers.get(name), name
        parsed = RateLimitHeaders.parse(raw.headers)
        assert parsed.requests is not None and parsed.tokens is not None
        assert parsed.requests.limit == 60 and parsed.tokens.limit == 10_000
        remaining.append(parsed.requests.remaining)
        # With a continuously refilling bucket, reset = used × (window / limit): 60 RPM, 1 used -> 1s.
        used = 60 - parsed.requests.remaining
        assert parse_duration(raw.headers["x-ratelimit-reset-requests"]) == pytest.approx(used * 1.0)
        usage = raw.parse().usage
        assert parsed.tokens.remaining <= 10_000 - usage.total_tokens
    assert remaining == [59, 58, 57]
    # The fake clock moves: one second refills one request.
    assert isinstance(sim.clock, FakeClock)
    sim.clock.advance(1.0)
    assert RateLimitHeaders.parse(_chat(client).headers).requests.remaining == 57  # type: ignore[union-attr]


async def test_headers_async_client(make_sim: Callable[..., Simulator], async_client: Any) -> None:
    sim = make_sim(rpm=100, tpm=50_000)
    client = async_client(sim)
    seen = []
    for _ in range(3):
        raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=user("hi"))
        seen.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["openai-version"] == "2020-10-01"
        assert raw.headers["x-request-id"].startswith("req_")
    assert seen == [99, 98, 97]


def test_rpm_n_plus_one_gets_exact_429(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    # Free refusals: the wait is then exactly one refill interval, as in the documented example body
    # (charged refusals, the default, are test_count_refused_requests_by_default).
    sim = make_sim(rpm=3, tpm=None, count_refused_requests=False)
    client = sync_client(sim)
    for _ in range(3):
        _chat(client)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client)
    org = exc.value.response.headers["openai-organization"]
    assert _error(exc) == rate_limit_error(MODEL, org, LimitKind.RPM, 3, 3, 1, 20.0)
    assert "Limit 3, Used 3, Requested 1. Please try again in 20s." in exc.value.message
    assert exc.value.response.headers["retry-after"] == "20"
    assert exc.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert classify(429, exc.value.response.json()).error_class is ErrorClass.RATE_LIMITED
    # Waiting what the error said is enough (the refused request did not count).
    sim.clock.advance(20.0)  # type: ignore[attr-defined]
    assert _chat(client).status_code == 200


async def test_rpm_async_429(make_sim: Callable[..., Simulator], async_client: Any) -> None:
    sim = make_sim(rpm=2, tpm=None, count_refused_requests=False)  # the exact body of a first refusal
    client = async_client(sim)
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=user("x"))
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model=MODEL, messages=user("x"))
    org = exc.value.response.headers["openai-organization"]
    assert exc.value.response.json() == rate_limit_error(MODEL, org, LimitKind.RPM, 2, 2, 1, 30.0)


def test_tpm_n_plus_one_gets_exact_429(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    # settle off: each request costs exactly its admission charge (max_tokens=40), so the arithmetic is exact.
    sim = make_sim(rpm=None, tpm=100, settle_actual_tokens=False)
    client = sync_client(sim)
    _chat(client, max_tokens=40)
    _chat(client, max_tokens=40)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client, max_tokens=40)
    org = exc.value.response.headers["openai-organization"]
    # 20 tokens short at 100 tokens/min: 12 s.
    assert _error(exc) == rate_limit_error(MODEL, org, LimitKind.TPM, 100, 80, 40, 12.0)
    assert exc.value.response.headers["retry-after"] == "12"
    assert exc.value.body["type"] == "tokens"  # type: ignore[index]
    sim.clock.advance(12.0)  # type: ignore[attr-defined]
    assert _chat(client, max_tokens=40).status_code == 200


def test_rpd_n_plus_one_gets_exact_429_and_daily_headers(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=100, rpd=2, tpm=None, count_refused_requests=False)  # the exact wait of a free refusal
    client = sync_client(sim)
    first = _chat(client)
    # The daily bucket binds (1 left of 2 vs 99 of 100), so it is what the -requests headers report.
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"] == "12h0m0s"
    _chat(client)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client)
    org = exc.value.response.headers["openai-organization"]
    assert _error(exc) == rate_limit_error(MODEL, org, LimitKind.RPD, 2, 2, 1, 43_200.0)
    assert "on requests per day (RPD): Limit 2, Used 2, Requested 1. Please try again in 12h0m0s." in exc.value.message


def test_tpd_n_plus_one_gets_exact_429(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=None, tpm=None, tpd=1_000, settle_actual_tokens=False)
    client = sync_client(sim)
    _chat(client, max_tokens=500)
    _chat(client, max_tokens=400)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client, max_tokens=200)
    org = exc.value.response.headers["openai-organization"]
    # 100 tokens short at 1000 tokens/day: 8640 s.
    assert _error(exc) == rate_limit_error(MODEL, org, LimitKind.TPD, 1_000, 900, 200, 8_640.0)
    assert exc.value.response.headers["retry-after"] == "8640"


def test_request_too_large(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(tpm=1_000)
    client = sync_client(sim)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client, max_tokens=1_500)
    org = exc.value.response.headers["openai-organization"]
    assert _error(exc) == request_too_large_error(MODEL, org, LimitKind.TPM, 1_000, 1_500)
    assert "retry-after" not in exc.value.response.headers
    assert classify(429, exc.value.response.json()).error_class is ErrorClass.TOO_LARGE
    assert sim.stats()["rate_limited"]["too_large"] == 1


def test_insufficient_quota_is_distinct(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(credit_usd=0.000_01)
    client = sync_client(sim)
    _chat(client, "spend some credit " * 20)  # the request that crosses the credit is still served
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client)
    assert exc.value.response.json() == insufficient_quota_error()
    assert exc.value.code == "insufficient_quota" and exc.value.type == "insufficient_quota"
    assert classify(429, exc.value.response.json()).error_class is ErrorClass.QUOTA
    assert "x-ratelimit-limit-requests" not in exc.value.response.headers
    stats = sim.stats()
    assert stats["rate_limited"]["insufficient_quota"] == 1
    assert stats["rate_limited"]["RPM"] == 0
    # Another organization still has its own credit.
    assert _chat(sync_client(sim)).status_code == 200


def test_tpm_is_settled_to_actual_usage(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(tpm=10_000)
    client = sync_client(sim)
    body = {"model": MODEL, "messages": user("count me"), "max_tokens": 500}
    raw = _chat(client, "count me", max_tokens=500)
    usage = raw.parse().usage
    # Admission charged max(chars/4, max_tokens) = 500; the bucket then keeps only the actual usage.
    assert admission_cost("/v1/chat/completions", body) == 500
    assert usage.prompt_tokens == estimate_prompt_tokens("/v1/chat/completions", body)
    assert usage.completion_tokens == count_text("count me")
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 10_000 - usage.total_tokens


def test_get_requests_count_toward_rpm(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=2)
    client = sync_client(sim)
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    client.models.retrieve(MODEL)
    with pytest.raises(openai.RateLimitError):
        client.models.list()


def test_get_requests_can_be_free(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=1, count_get_requests=False)
    client = sync_client(sim)
    for _ in range(3):
        client.models.list()


def test_count_refused_requests_by_default(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=3, tpm=None)  # the default: "unsuccessful requests contribute to your per-minute limit"
    assert sim.config.count_refused_requests is True
    client = sync_client(sim)
    for _ in range(3):
        _chat(client)
    for expected_wait in (40, 60):  # each refused attempt pushes the bucket one interval further
        with pytest.raises(openai.RateLimitError) as exc:
            _chat(client)
        assert exc.value.response.headers["retry-after"] == str(expected_wait)
        org = exc.value.response.headers["openai-organization"]
        # The body's wait is the honest one: it includes this refused request's own charge.
        assert _error(exc) == rate_limit_error(MODEL, org, LimitKind.RPM, 3, 3, 1, float(expected_wait))
    # Waiting what the last error said is enough.
    sim.clock.advance(60.0)  # type: ignore[attr-defined]
    assert _chat(client).status_code == 200


def test_refusals_can_be_free(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=3, tpm=None, count_refused_requests=False)
    client = sync_client(sim)
    for _ in range(3):
        _chat(client)
    for _ in range(3):  # retrying too early costs nothing: the wait stays one interval
        with pytest.raises(openai.RateLimitError) as exc:
            _chat(client)
        assert exc.value.response.headers["retry-after"] == "20"


def test_organizations_and_pools(sync_client: Any) -> None:
    from ratepilot.sim import KeySpec, PoolSpec

    config = SimConfig(
        rpm=2,
        tpm=None,
        keys={"sk-test-alice-0001": KeySpec("org-acme"), "sk-test-bob-00002": KeySpec("org-acme", "proj_b")},
        pools=(PoolSpec("gpt-4o-family", ("gpt-4o", "gpt-4o-mini")),),
    )
    with Simulator(config, clock=FakeClock()) as sim:
        alice = sync_client(sim, "sk-test-alice-0001")
        bob = sync_client(sim, "sk-test-bob-00002")
        assert (
            alice.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("a")).headers[
                "openai-organization"
            ]
            == "org-acme"
        )
        # Same org, same pool: bob's request to the other model uses the last request of the shared bucket.
        raw = bob.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user("b"))
        assert raw.headers["openai-project"] == "proj_b"
        with pytest.raises(openai.RateLimitError) as exc:
            alice.chat.completions.create(model="gpt-4o-mini", messages=user("c"))
        assert "in organization org-acme" in exc.value.message
        # A model outside the pool has its own bucket.
        alice.chat.completions.create(model="gpt-4.1", messages=user("d"))
        with pytest.raises(openai.AuthenticationError) as auth:
            sync_client(sim, "sk-test-mallory-9999").models.list()
        assert auth.value.code == "invalid_api_key"
        assert "sk-...9999" in auth.value.message and "mallory" not in auth.value.message


def test_retry_after_is_ceiled_seconds() -> None:
    from ratepilot.sim.config import Limits
    from ratepilot.sim.enforcement import PoolBuckets

    buckets = PoolBuckets(Limits(tpm=1_000))
    assert buckets.admit(1, 1_000, 0.0) is None
    refusal = buckets.admit(1, 1, 0.0)
    assert refusal is not None and refusal.kind is LimitKind.TPM
    assert refusal.wait == pytest.approx(0.06)
    assert math.ceil(refusal.wait) == 1


async def test_async_quota_too_large_and_daily(make_sim: Callable[..., Simulator], async_client: Any) -> None:
    sim = make_sim(tpm=1_000, rpd=1, credit_usd=0.000_001)
    client = async_client(sim)
    with pytest.raises(openai.RateLimitError) as too_large:
        await client.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=2_000)
    org = too_large.value.response.headers["openai-organization"]
    assert too_large.value.response.json() == request_too_large_error(MODEL, org, LimitKind.TPM, 1_000, 2_000)
    await client.chat.completions.create(model=MODEL, messages=user("spend " * 40))
    with pytest.raises(openai.RateLimitError) as quota:
        await client.chat.completions.create(model=MODEL, messages=user("x"))
    assert quota.value.response.json() == insufficient_quota_error()
    other = async_client(make_sim(rpd=1, tpm=None, count_refused_requests=False))  # exact one-interval wait
    await other.chat.completions.create(model=MODEL, messages=user("x"))
    with pytest.raises(openai.RateLimitError) as daily:
        await other.chat.completions.create(model=MODEL, messages=user("x"))
    org = daily.value.response.headers["openai-organization"]
    assert daily.value.response.json() == rate_limit_error(MODEL, org, LimitKind.RPD, 1, 1, 1, 86_400.0)
    assert daily.value.response.headers["retry-after"] == "86400"
