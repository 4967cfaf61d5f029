"""The API key never appears in logs, exceptions, the ledger or the limit state."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from openai import OpenAI

from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.errors import (
    BudgetExceeded,
    InputError,
    QuotaExhausted,
    RatePilotError,
    RequestTooLarge,
    RetriesExhausted,
)
from ratepilot.protocol.errors import classify
from ratepilot.retry import RetryPolicy
from ratepilot.sim import Simulator

MSG = [{"role": "user", "content": "hello"}]


def _everything_about(exc: BaseException) -> str:
    return " ".join([str(exc), repr(exc), repr(vars(exc)), repr(exc.args)])


def test_key_never_in_logs_exceptions_or_ledger(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plain = make_sim(rpm=2, tpm=1_000)
    broke = make_sim(credit_usd=0.0)
    pilot = Pilot(clock=clock, budget_usd=0.000006, retry=RetryPolicy.seeded(1))
    unbudgeted = Pilot(clock=clock)  # a budget refuses a huge max_tokens before the size check can
    errors: list[BaseException] = []
    with (
        pilot.wrap(OpenAI(base_url=plain.base_url, api_key=api_key)) as client,
        unbudgeted.wrap(OpenAI(base_url=plain.base_url, api_key=api_key)) as sized_client,
        pilot.wrap(OpenAI(base_url=broke.base_url, api_key=api_key)) as broke_client,
    ):
        for _ in range(6):  # throttled (fake-clock waits), then the budget stops it
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
            except BudgetExceeded as exc:
                errors.append(exc)
        for call in (
            lambda: sized_client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=1),
            lambda: sized_client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5_000),
            lambda: broke_client.embeddings.create(model="text-embedding-3-small", input="x"),
            lambda: client.chat.completions.create(model="no-such-model", messages=MSG, max_tokens=1),
        ):
            try:
                call()
            except Exception as exc:
                errors.append(exc)
    for expected in (BudgetExceeded, RequestTooLarge, QuotaExhausted):  # (the last two as SDK-native subclasses)
        assert any(isinstance(e, expected) for e in errors), expected
    for exc in errors:
        assert api_key not in _everything_about(exc)
    assert api_key not in caplog.text
    assert caplog.records  # there was something to grep
    assert api_key not in repr(pilot.usage().to_dict())
    assert api_key not in repr(pilot.limits("gpt-4o-mini").to_dict())
    assert api_key not in repr(pilot.limits("gpt-4o-mini"))


def test_error_messages_scrub_key_shaped_text(api_key: str) -> None:
    leaked = f"upstream said: Incorrect API key provided: {api_key}"
    body = {"error": {"message": leaked, "type": "server_error", "code": None}}
    for exc in (
        QuotaExhausted("insufficient_quota", server_message=leaked),
        RequestTooLarge(model="m", limit=1, requested=2, server_message=leaked),
        RetriesExhausted(attempts=2, reason="r", last_status=500, last_message=leaked, last_info=classify(500, body)),
        InputError(leaked, line=3, field="body"),
        RatePilotError(leaked),
    ):
        assert api_key not in _everything_about(exc)
        assert "sk-...CRET" in _everything_about(exc)


def test_quota_message_is_actionable() -> None:
    exc = QuotaExhausted("credit_balance_exhausted", request_id="req_1", model="gpt-4o")
    assert "check your plan and billing" in str(exc).lower()
    assert exc.code == "credit_balance_exhausted" and "req_1" in str(exc)
    err = InputError("not valid JSON", line=7, field="body.messages")
    assert (err.line, err.field) == (7, "body.messages")
    assert str(err).startswith("line 7, field 'body.messages': ")
