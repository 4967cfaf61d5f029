"""The Assistants API (v2) with the official SDK: the classic "classify each file" loop, and run statuses."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure, shutdown

# The Assistants API is deprecated; the SDK warns on every call.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def classifier() -> Iterator[tuple[Simulator, OpenAI]]:
    """A real-time simulator whose responder answers INVOICE/OTHER, runs lasting 30 ms (time_scale 100)."""
    config = SimConfig(
        responder="classify", classify_pattern=r"(?i)\binvoice\b", classify_yes="INVOICE", classify_no="OTHER"
    )
    with Simulator(config) as sim, OpenAI(base_url=sim.base_url, api_key="sk-test-asst-0001", max_retries=0) as c:
        configure(
            sim.state, LongrunConfig(time_scale=100, run_queued_seconds=1, run_in_progress_seconds=2, poll_after_ms=5)
        )
        yield sim, c
        shutdown(sim.state)


def test_classify_each_file_loop(classifier: tuple[Simulator, OpenAI]) -> None:
    _sim, client = classifier
    documents = {
        "a.txt": "INVOICE #42\nTotal due: 120 EUR",
        "b.txt": "Dear team, the offsite is next week.",
        "c.txt": "Please find the invoice attached.",
    }
    assistant = client.beta.assistants.create(
        model="gpt-4o-mini",
        instructions="Classify the attached file. Answer INVOICE or OTHER.",
        tools=[{"type": "file_search"}],
    )
    # Record the SDK poll helper's waits (it sleeps `openai-poll-after-ms`, or 1 s without the header).
    runs = client.beta.threads.runs
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    runs._sleep = sleep  # type: ignore[method-assign]
    labels: dict[str, str] = {}
    for name, text in documents.items():
        uploaded = client.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants")
        thread = client.beta.threads.create(
            messages=[
                {
                    "role": "user",
                    "content": "Classify this file.",
                    "attachments": [{"file_id": uploaded.id, "tools": [{"type": "file_search"}]}],
                }
            ]
        )
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "completed"
        assert run.usage is not None and run.usage.prompt_tokens > 0
        messages = client.beta.threads.messages.list(thread_id=thread.id, run_id=run.id)
        reply = messages.data[0]
        assert reply.role == "assistant" and reply.run_id == run.id and reply.assistant_id == assistant.id
        block = reply.content[0]
        assert block.type == "text"
        labels[name] = block.text.value
    assert labels == {"a.txt": "INVOICE", "b.txt": "OTHER", "c.txt": "INVOICE"}
    assert waits and set(waits) == {0.005}  # runs of "3 s" at time_scale 100, polled every 5 ms
    all_messages = client.beta.threads.messages.list(thread_id=thread.id)
    assert [m.role for m in all_messages.data] == ["assistant", "user"]  # newest first


@pytest.fixture
def fake(sim: Simulator, sim_clock: FakeClock, client: OpenAI, longrun: Callable[..., Any]) -> tuple[OpenAI, FakeClock]:
    longrun(run_queued_seconds=1, run_in_progress_seconds=2, run_expiry_seconds=60, poll_after_ms=250)
    return client, sim_clock


def _assistant(client: OpenAI, **kw: Any) -> str:
    return client.beta.assistants.create(model="gpt-4o-mini", instructions="be brief", **kw).id


def test_run_statuses_over_time_and_poll_header(fake: tuple[OpenAI, FakeClock]) -> None:
    client, clock = fake
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=_assistant(client))
    assert run.status == "queued"
    seen = []
    for _ in range(8):
        raw = client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread.id)
        assert raw.headers["openai-poll-after-ms"] == "250"
        seen.append(raw.parse().status)
        clock.advance(0.5)
    assert seen == [
        "queued",
        "queued",
        "in_progress",
        "in_progress",
        "in_progress",
        "in_progress",
        "completed",
        "completed",
    ]
    final = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert final.started_at is not None and final.completed_at is not None and final.expires_at is None
    answer = client.beta.threads.messages.list(thread_id=thread.id).data[0]
    assert answer.content[0].type == "text" and answer.content[0].text.value == "hello"  # echo responder


def test_requires_action_then_tool_outputs(fake: tuple[OpenAI, FakeClock]) -> None:
    client, clock = fake
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "look it up"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=_assistant(client, tools=tools))
    clock.advance(3)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "requires_action"
    assert run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    assert call.function.name == "lookup"
    run = client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "42"}]
    )
    assert run.status == "queued"
    clock.advance(3)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "completed"


def test_requires_action_left_alone_expires(fake: tuple[OpenAI, FakeClock]) -> None:
    client, clock = fake
    tools: Any = [{"type": "function", "function": {"name": "lookup"}}]
    thread = client.beta.threads.create()
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=_assistant(client, tools=tools))
    clock.advance(61)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "expired"
    assert run.required_action is None


def test_injected_failure_has_last_error(
    sim: Simulator, sim_clock: FakeClock, client: OpenAI, longrun: Callable[..., Any]
) -> None:
    longrun(run_failure_rate=1.0)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=_assistant(client))
    sim_clock.advance(10)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "failed"
    assert run.last_error is not None
    assert (run.last_error.code, run.last_error.message) == ("server_error", "Sorry, something went wrong.")
    assert run.failed_at is not None


def test_cancel_a_run(fake: tuple[OpenAI, FakeClock]) -> None:
    client, clock = fake
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=_assistant(client))
    assert client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status == "cancelling"
    clock.advance(0.1)
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled"


def test_beta_header_is_required(sim: Simulator, longrun: Callable[..., Any]) -> None:
    longrun()
    with (
        OpenAI(
            base_url=sim.base_url, api_key="sk-test-asst-0002", max_retries=0, default_headers={"OpenAI-Beta": ""}
        ) as client,
        pytest.raises(openai.BadRequestError) as info,
    ):
        client.beta.assistants.list(extra_headers={"OpenAI-Beta": ""})
    assert "OpenAI-Beta" in info.value.message
