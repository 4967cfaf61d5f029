"""The sans-IO retry policy: what is retried, how long it waits, and when it gives up."""

from __future__ import annotations

import pytest

from ratepilot.protocol.errors import (
    BILLING_CODES,
    ErrorClass,
    LimitKind,
    classify,
    insufficient_quota_error,
    rate_limit_error,
    request_too_large_error,
    server_error,
    slow_down_error,
)
from ratepilot.retry import FailureKind, GiveUp, Retry, RetryPolicy, RetryState, server_wait_hint


def _state(status: int, body: object, headers: dict[str, str] | None = None, attempt: int = 1) -> RetryState:
    h = headers or {}
    return RetryState(attempt, FailureKind.RESPONSE, 0.0, classify(status, body, h), h)


RPM_429 = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.RPM, 3, 3, 1, 20.0)


def test_rate_limit_waits_what_the_message_says() -> None:
    decision = RetryPolicy.seeded(1).decide(_state(429, RPM_429))
    assert decision == Retry(20.0, "429 rate_limit_exceeded")


def test_hint_precedence_retry_after_ms_then_retry_after_then_text_then_reset() -> None:
    err = classify(429, RPM_429)
    assert server_wait_hint(err, {"retry-after-ms": "1500", "retry-after": "7"}) == 1.5
    assert server_wait_hint(err, {"retry-after": "7"}) == 7.0
    assert server_wait_hint(err, {}) == 20.0
    no_text = classify(429, {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}})
    reset = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    # One request refills in 60s / 60 = 1s.
    assert server_wait_hint(no_text, reset) == pytest.approx(1.0)
    assert server_wait_hint(no_text, {}) is None


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504])
def test_transient_statuses_back_off_with_full_jitter(status: int) -> None:
    policy = RetryPolicy.seeded(7, base=0.5, cap=8.0)
    waits = []
    for attempt in range(1, 7):
        d = policy.decide(_state(status, server_error(), attempt=attempt))
        assert isinstance(d, Retry)
        assert 0.0 <= d.after <= min(8.0, 0.5 * 2 ** (attempt - 1))
        waits.append(d.after)
    again = RetryPolicy.seeded(7, base=0.5, cap=8.0)
    assert waits == [again.decide(_state(status, server_error(), attempt=a)).after for a in range(1, 7)]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [FailureKind.TIMEOUT, FailureKind.CONNECTION])
def test_timeouts_and_connection_errors_are_retried(kind: FailureKind) -> None:
    assert isinstance(RetryPolicy.seeded(3).decide(RetryState(1, kind)), Retry)


@pytest.mark.parametrize("code", sorted(BILLING_CODES))
def test_billing_codes_are_never_retried(code: str) -> None:
    d = RetryPolicy().decide(_state(429, insufficient_quota_error(code)))
    assert isinstance(d, GiveUp) and not d.exhausted
    assert "never retried" in d.reason


def test_request_too_large_is_never_retried() -> None:
    body = request_too_large_error("gpt-4o-mini", "org-x", LimitKind.TPM, 30_000, 30_601)
    d = RetryPolicy().decide(_state(429, body))
    assert isinstance(d, GiveUp) and not d.exhausted


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_never_retried(status: int) -> None:
    d = RetryPolicy().decide(_state(status, {"error": {"message": "no", "type": "invalid_request_error"}}))
    assert isinstance(d, GiveUp) and not d.exhausted


def test_caps_attempts_total_wait_and_single_wait_apply_to_faults() -> None:
    policy = RetryPolicy.seeded(1, max_attempts=3, max_total_wait=30.0, max_single_wait=25.0)
    assert isinstance(policy.decide(_state(500, server_error(), attempt=2)), Retry)
    capped = policy.decide(_state(500, server_error(), attempt=3))
    assert isinstance(capped, GiveUp) and capped.exhausted
    waited = policy.decide(
        RetryState(1, FailureKind.RESPONSE, 15.0, classify(503, server_error(True)), {"retry-after": "20"})
    )
    assert isinstance(waited, GiveUp) and waited.exhausted  # 15 s waited + 20 s > 30 s
    too_long = policy.decide(_state(503, server_error(True), {"retry-after": "60"}))
    assert isinstance(too_long, GiveUp) and too_long.exhausted and "max_single_wait" in too_long.reason


def test_a_rate_limit_refusal_never_gives_up_for_attempts_or_waits() -> None:
    """A 429 rate_limit_exceeded / slow_down can always succeed later: no attempt or wait cap applies."""
    policy = RetryPolicy.seeded(1, max_attempts=3, max_total_wait=30.0, max_single_wait=25.0)
    many = policy.decide(RetryState(50, FailureKind.RESPONSE, 0.0, classify(429, RPM_429), {}, refusals=50))
    assert isinstance(many, Retry) and many.after == pytest.approx(20.0)
    daily = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.RPD, 10, 10, 1, 3600.0)
    assert isinstance(policy.decide(_state(429, daily)), Retry)
    slow = classify(429, slow_down_error(4.2))
    assert slow.error_class is ErrorClass.RATE_LIMITED
    assert isinstance(policy.decide(RetryState(9, FailureKind.RESPONSE, 0.0, slow, {}, refusals=9)), Retry)
    # Faults before and after refusals are counted on their own: 2 faults + 40 refusals is under max_attempts=3.
    mixed = policy.decide(RetryState(42, FailureKind.RESPONSE, 0.0, classify(500, server_error()), {}, refusals=40))
    assert isinstance(mixed, Retry)


def test_patience_bounds_the_wait_for_rate_limit_capacity() -> None:
    policy = RetryPolicy.seeded(1, patience=60.0)
    ok = policy.decide(RetryState(2, FailureKind.RESPONSE, 0.0, classify(429, RPM_429), {}, 2, refusal_waited=30.0))
    assert isinstance(ok, Retry)
    out = policy.decide(RetryState(3, FailureKind.RESPONSE, 0.0, classify(429, RPM_429), {}, 3, refusal_waited=45.0))
    assert isinstance(out, GiveUp) and out.exhausted and "patience" in out.reason
    daily = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.RPD, 10, 10, 1, 3600.0)
    assert isinstance(policy.decide(_state(429, daily)), GiveUp)  # an hour away: never within 60 s


def test_x_should_retry_false_stops_a_5xx() -> None:
    d = RetryPolicy().decide(_state(500, server_error(), {"x-should-retry": "false"}))
    assert isinstance(d, GiveUp)


def test_a_zero_hint_is_no_hint_refusals_back_off() -> None:
    """`retry-after: 0` / "try again in 0s" on every refusal must not become a loop at full speed."""
    policy = RetryPolicy.seeded(3, base=0.5, cap=30.0)
    afters = [
        policy.decide(RetryState(n, FailureKind.RESPONSE, 0.0, classify(429, RPM_429), {"retry-after": "0"}, n))
        for n in range(1, 12)
    ]
    assert all(isinstance(a, Retry) for a in afters)
    assert sum(a.after for a in afters if isinstance(a, Retry)) > 10.0  # exponential, capped at 30 s


def test_429s_that_can_never_succeed_or_are_not_rate_limits() -> None:
    zero = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.TPM, 0, 0, 500, 1.0)  # no TPM for this model
    assert classify(429, zero).error_class is ErrorClass.TOO_LARGE
    over = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.TPM, 1_000, 0, 5_000, 1.0)
    assert classify(429, over).error_class is ErrorClass.TOO_LARGE
    flex = {
        "error": {"message": "Resource Unavailable", "type": "invalid_request_error", "code": "resource_unavailable"}
    }
    assert classify(429, flex).error_class is ErrorClass.UNAVAILABLE  # not a rate limit: the pace is not cut
    assert classify(503, slow_down_error(2.0)).error_class is ErrorClass.RATE_LIMITED  # older servers' slow_down


def test_refusal_evidence_reads_the_refusing_dimension_and_its_headers() -> None:
    from ratepilot.limits.learning import refusal_evidence

    tpm = rate_limit_error("m", "org", LimitKind.TPM, 60_000, 59_000, 800, 0.2)["error"]
    room = {
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-tokens": "59000",
        "x-ratelimit-reset-tokens": "1s",
    }
    full = {
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "59s",
    }
    assert refusal_evidence(tpm["message"], tpm["type"], room, 800) == ("tpm",)  # room shown: a shorter window
    assert refusal_evidence(tpm["message"], tpm["type"], full, 800) == ()  # the minute bucket explains it
    assert refusal_evidence(tpm["message"], tpm["type"], {}, 800) == ("tpm",)  # no headers: evidence
    assert refusal_evidence("", "requests", {}, 1) == ("rpm",)  # only the type
    assert refusal_evidence("", None, {}, 1) is None  # unknown: every minute dimension


def test_a_whole_second_retry_after_yields_to_the_exact_wait_in_the_message() -> None:
    """api.openai.com rounds retry-after up to whole seconds; "Please try again in 200ms" is the same wait, exact."""
    err = classify(429, rate_limit_error("gpt-4o-mini", "org-x", LimitKind.RPM, 300, 5, 1, 0.2))
    assert server_wait_hint(err, {"retry-after": "1"}) == pytest.approx(0.2)
    assert server_wait_hint(err, {"retry-after": "3"}) == 3.0  # a longer ask is not a rounding: obeyed
    assert server_wait_hint(err, {"retry-after-ms": "900", "retry-after": "1"}) == 0.9  # ms is already exact


def test_a_request_sent_at_most_once_waits_out_refusals_but_never_retries_a_fault() -> None:
    # x-ratepilot-retry: never (a batch create): a 500 or a dropped answer may follow the server's action.
    policy = RetryPolicy.seeded(1)
    refused = RetryState(1, FailureKind.RESPONSE, 0.0, classify(429, RPM_429), {}, refusals=1, retry_faults=False)
    assert isinstance(policy.decide(refused), Retry)  # a 429: the server did nothing
    for state in (
        RetryState(1, FailureKind.RESPONSE, 0.0, classify(500, server_error()), {}, retry_faults=False),
        RetryState(1, FailureKind.CONNECTION, 0.0, retry_faults=False),
        RetryState(1, FailureKind.TIMEOUT, 0.0, retry_faults=False),
    ):
        decision = policy.decide(state)
        assert isinstance(decision, GiveUp) and decision.exhausted and "sent twice" in decision.reason


def test_flex_unavailability_backs_off_without_counting_as_a_fault_until_its_patience_runs_out() -> None:
    flex = classify(429, {"error": {"message": "Resource Unavailable", "code": "resource_unavailable"}})
    policy = RetryPolicy.seeded(2, max_attempts=2, unavailable_patience=60.0)
    waits = []
    waited = 0.0
    for attempt in range(1, 20):
        decision = policy.decide(RetryState(attempt, FailureKind.RESPONSE, waited, flex, {}))
        if isinstance(decision, GiveUp):
            break
        waits.append(decision.after)
        waited += decision.after
    assert isinstance(decision, GiveUp) and decision.exhausted and "unavailable_patience=60s" in decision.reason
    assert len(waits) > 2  # max_attempts=2 counts faults, not these
    assert waited <= 60.0 and max(waits) <= policy.cap  # backed off, capped: never a storm
