"""``wait`` / ``wait_async`` against the simulator (real SDK, real HTTP), on a FakeClock shared with it."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI, InternalServerError, NotFoundError, OpenAI

from ratepilot.clock import FakeClock
from ratepilot.poll import WaitProgress, WaitTimeout, wait, wait_async
from ratepilot.protocol.webhooks import new_secret
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure
from ratepilot.webhooks import ReceiverServer, WebhookReceiver

from .conftest import create_batch, longrun_for

KEY = "sk-test-wait-1"


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(SimConfig(), clock=clock) as s:
        yield s


def polls_seen(sim: Simulator, endpoint: str = "/v1/batches/{id}") -> int:
    return int(sim.stats()["requests"]["by_endpoint"].get(endpoint, 0))


def test_wait_for_an_hour_long_batch(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, longrun_for(3600, 50))
    seen: list[WaitProgress] = []
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        batch = create_batch(client, 50)
        start = clock.now()
        done = wait(client, batch, clock=clock, on_progress=seen.append)
    assert done.status == "completed" and done.request_counts.completed == 50
    assert polls_seen(sim) == len(seen) == seen[-1].polls <= 15
    assert 3600 <= clock.now() - start <= 3600 * 1.05
    assert [p.status for p in seen][-1] == "completed" and seen[-1].next_poll is None
    assert any(p.eta is not None for p in seen)  # progress gave a prediction on the way


async def test_wait_async_for_a_batch(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, longrun_for(600, 20))
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as sync_client:
        batch = create_batch(sync_client, 20)
    async with AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        start = clock.now()
        done = await wait_async(client, batch.id, clock=clock)  # a bare id works too
    assert done.status == "completed"
    assert 600 <= clock.now() - start <= 630 and polls_seen(sim) <= 15


def test_background_response(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, LongrunConfig(response_queued_seconds=2, response_in_progress_seconds=30))
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        resp = client.responses.create(model="gpt-4o-mini", input="hello", background=True)
        assert resp.status == "queued"
        start = clock.now()
        done = wait(client, resp, clock=clock)
    assert done.status == "completed" and done.output_text
    assert 32 <= clock.now() - start <= 32 * 1.3
    assert polls_seen(sim, "/v1/responses/{id}") <= 12


def _run_with(client: OpenAI, tools: list[dict[str, Any]]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assistant = client.beta.assistants.create(model="gpt-4o-mini", tools=tools)  # type: ignore[arg-type]
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
        return client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)


def test_assistants_run_requires_action_is_returned_to_the_caller(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, LongrunConfig(run_queued_seconds=1, run_in_progress_seconds=5, poll_after_ms=2500))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        run = _run_with(client, [tool])
        done = wait(client, run, clock=clock)
        assert done.status == "requires_action" and done.required_action is not None
        # The first look comes soon; after it, the server's openai-poll-after-ms (2.5 s) is a floor.
        assert clock.slept[0] == 1.0 and all(s >= 2.5 for s in clock.slept[1:]), clock.slept
        plain = wait(client, _run_with(client, []), clock=clock)
        assert plain.status == "completed"


def test_timeout_raises_with_the_last_state(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, longrun_for(3600, 20))
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        batch = create_batch(client, 20)
        start = clock.now()
        with pytest.raises(WaitTimeout) as info:
            wait(client, batch, timeout=300, clock=clock)
    err = info.value
    assert err.reason == "timeout" and err.last.status == "in_progress" and err.last.id == batch.id
    assert clock.now() - start == pytest.approx(300)  # the last look is at the deadline, not later
    assert "not finished after 300s" in str(err) and "in_progress" in str(err)
    assert isinstance(err, TimeoutError)


def test_poll_budget(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, longrun_for(3600, 20))
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        batch = create_batch(client, 20)
        with pytest.raises(WaitTimeout) as info:
            wait(client, batch, max_polls=3, clock=clock)
    assert info.value.reason == "max_polls" and info.value.polls == 3 and polls_seen(sim) == 3


def test_webhooks_replace_polling(clock: FakeClock) -> None:
    secret = new_secret()
    receiver = WebhookReceiver(secret)  # checks timestamps against real time, as the simulator signs with it
    with ReceiverServer(receiver) as server, Simulator(SimConfig(), clock=clock) as sim:
        configure(sim.state, longrun_for(60, 10, webhook_url=server.url, webhook_secret=secret))
        seen: list[WaitProgress] = []
        with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
            batch = create_batch(client, 10)
            done = wait(client, batch, receiver=receiver, clock=clock, on_progress=seen.append)
        assert done.status == "completed"
        assert polls_seen(sim) == 1  # the one confirming retrieve
        assert len(seen) == 1 and seen[0].polls == 0 and seen[0].retrieves == 1
        assert [e.type for e in receiver.events] == ["batch.completed"]


async def test_webhooks_wake_an_async_waiter() -> None:
    # Time moves only when the test says. With an autojumping clock the waiter's sleep reaches its deadline at
    # once, and the wait can end on the deadline's confirming retrieve (which itself completes the response)
    # while the webhook is still in flight: then nothing here would show the event woke the waiter. Here the
    # deadline is unreachable, so only the webhook can end the wait.
    clock = FakeClock(autojump=False)
    secret = new_secret()
    receiver = WebhookReceiver(secret)
    with ReceiverServer(receiver) as server, Simulator(SimConfig(), clock=clock) as sim:
        configure(
            sim.state, LongrunConfig(response_in_progress_seconds=50, webhook_url=server.url, webhook_secret=secret)
        )
        async with AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
            resp = await client.responses.create(model="gpt-4o-mini", input="hello", background=True)
            start = clock.now()
            task = asyncio.create_task(wait_async(client, resp, receiver=receiver, clock=clock, timeout=3600))
            await asyncio.sleep(0)
            clock.advance(60)  # the response ends at 51 s; the simulator's sender thread notices and posts
            done = await asyncio.wait_for(task, 10)  # a real bound: a lost webhook fails here, it does not hang
        assert done.status == "completed"
        assert clock.now() - start == 60  # woken by the event, not by the deadline
        assert polls_seen(sim, "/v1/responses/{id}") == 1
        # The receiver records an event before it wakes the waiters, so it is there once the wait is over.
        assert [e.type for e in receiver.events] == ["response.completed"]


def test_webhook_wait_times_out_with_one_confirming_retrieve(sim: Simulator, clock: FakeClock, secret: str) -> None:
    configure(sim.state, longrun_for(3600, 10))
    receiver = WebhookReceiver(secret)  # no webhook ever arrives
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        batch = create_batch(client, 10)
        with pytest.raises(WaitTimeout) as info:
            wait(client, batch, receiver=receiver, timeout=120, clock=clock)
    assert info.value.polls == 0 and polls_seen(sim) == 1 and info.value.last.status == "in_progress"


def test_bad_objects_are_refused_before_any_request(sim: Simulator, clock: FakeClock) -> None:
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
        with pytest.raises(ValueError, match="cannot wait on"):
            wait(client, {"object": "chat.completion", "id": "chatcmpl-1"}, clock=clock)
        with pytest.raises(ValueError, match="needs the object itself"):
            wait(client, "run_abc", clock=clock)
    assert sim.stats()["requests"]["total"] == 0


class FlakyTransport(httpx2.BaseTransport):
    """The real transport, except that chosen status checks fail: a dropped connection or a bare 500."""

    def __init__(self, fail: Callable[[int], str | None]) -> None:
        self.inner = httpx2.HTTPTransport()
        self.fail = fail
        self.gets = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET" and "/batches/" in request.url.path:
            self.gets += 1
            failure = self.fail(self.gets)
            if failure == "drop":
                raise httpx2.ConnectError("connection reset by peer", request=request)
            if failure == "500":
                return httpx2.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def flaky_client(sim: Simulator, fail: Callable[[int], str | None]) -> tuple[OpenAI, FlakyTransport]:
    transport = FlakyTransport(fail)
    http = httpx2.Client(transport=transport)
    return OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0, http_client=http), transport


def test_transient_failures_are_missed_polls_not_the_end_of_the_wait(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, longrun_for(600, 20))
    client, transport = flaky_client(sim, lambda n: {0: "drop", 1: "500"}.get(n % 3))  # 2 of 3 checks fail
    with client:
        batch = create_batch(client, 20)
        done = wait(client, batch, clock=clock)
    assert done.status == "completed"
    assert transport.gets >= 3 * polls_seen(sim) - 3  # the failed ones never reached the simulator


def test_persistent_failures_are_raised(sim: Simulator, clock: FakeClock) -> None:
    configure(sim.state, longrun_for(600, 20))
    client, transport = flaky_client(sim, lambda n: "500")
    with client:
        batch = create_batch(client, 20)
        start = clock.now()
        with pytest.raises(InternalServerError):
            wait(client, batch, clock=clock)
    assert transport.gets == 6  # the first try and 5 more after back-offs (PollPolicy.max_failures)
    assert clock.slept[-5:] == [2.0, 4.0, 8.0, 16.0, 32.0] and clock.now() - start == 1 + 62


def test_a_missing_object_is_raised_at_once(sim: Simulator, clock: FakeClock) -> None:
    with OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client, pytest.raises(NotFoundError):
        wait(client, "batch_doesnotexist", clock=clock)
    assert polls_seen(sim) == 1
