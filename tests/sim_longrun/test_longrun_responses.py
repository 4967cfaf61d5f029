"""Responses API background mode with the official SDK: queued -> in_progress -> completed, polling, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai import OpenAI

from ratepilot.clock import FakeClock


def test_background_response_polls_to_completed(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(response_queued_seconds=1, response_in_progress_seconds=2)
    created = client.responses.create(model="gpt-4o-mini", input="ping background", background=True)
    assert created.status == "queued"
    assert created.background is True
    assert created.output == []
    statuses = [created.status]
    response = created
    for _ in range(20):
        if response.status not in ("queued", "in_progress"):
            break
        sim_clock.advance(0.5)
        response = client.responses.retrieve(created.id)
        if response.status != statuses[-1]:
            statuses.append(response.status)
    assert statuses == ["queued", "in_progress", "completed"]
    assert response.id == created.id
    assert response.output_text == "ping background"  # the echo responder, same as a sync response
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.completed_at is not None


def test_cancel_a_background_response(client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]) -> None:
    longrun(response_queued_seconds=1, response_in_progress_seconds=10)
    created = client.responses.create(model="gpt-4o-mini", input="long job", background=True)
    sim_clock.advance(2)
    assert client.responses.retrieve(created.id).status == "in_progress"
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    sim_clock.advance(60)
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent


def test_injected_failure_and_incomplete(client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]) -> None:
    longrun(response_failure_rate=1.0)
    failed = client.responses.create(model="gpt-4o-mini", input="x", background=True)
    sim_clock.advance(10)
    failed = client.responses.retrieve(failed.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(failed.id)
    longrun(response_incomplete_rate=1.0)
    partial = client.responses.create(model="gpt-4o-mini", input="y", background=True)
    sim_clock.advance(10)
    partial = client.responses.retrieve(partial.id)
    assert partial.status == "incomplete"
    assert partial.incomplete_details is not None and partial.incomplete_details.reason == "max_output_tokens"


def test_unknown_response_is_404(client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve("resp_nope")
    assert info.value.body == {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
