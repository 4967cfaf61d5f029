"""Webhooks: Standard-Webhooks signatures the SDK accepts, retries with backoff on non-2xx, real HTTP."""

from __future__ import annotations

import base64
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from longrun_helpers import EP, batch_lines, jsonl, upload
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import Simulator
from ratepilot.sim.longrun.webhooks import WebhookOutbox, WebhookSender, sign

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def test_signature_verifies_with_the_sdk() -> None:
    with OpenAI(api_key="sk-test-x", base_url="http://127.0.0.1:9/v1") as client:
        outbox = WebhookOutbox()
        delivery = outbox.enqueue("batch.completed", "batch_abc", 1_767_225_600, 0.0)
        sender = WebhookSender(outbox, "http://unused", SECRET, FakeClock())
        headers = sender.headers_for(delivery)
        event = client.webhooks.unwrap(delivery.body, headers, secret=SECRET)
        assert event.type == "batch.completed"
        assert event.data.id == "batch_abc"
        assert event.id == delivery.event_id and event.id.startswith("evt_")
        with pytest.raises(Exception, match="signature"):
            client.webhooks.unwrap(delivery.body + b" ", headers, secret=SECRET)
    assert sign(SECRET, "msg", 1, b"{}").startswith("v1,")


def test_retries_back_off_on_the_simulator_clock_then_give_up() -> None:
    clock = FakeClock()
    statuses = iter([500, 503])
    calls: list[float] = []

    def post(url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        calls.append(clock.now())
        return next(statuses, 200)

    outbox = WebhookOutbox(max_attempts=5, backoff=5, backoff_max=60)
    sender = WebhookSender(outbox, "http://receiver", SECRET, clock, post=post)
    delivery = outbox.enqueue("response.completed", "resp_1", 0, clock.now())
    assert sender.pump() == 1  # 500
    assert sender.pump() == 0  # not due yet
    clock.advance(4.9)
    assert sender.pump() == 0
    clock.advance(0.1)
    assert sender.pump() == 1  # 503, next in 10 s
    clock.advance(10)
    assert sender.pump() == 1  # 200
    assert delivery.done and not delivery.gave_up
    assert delivery.statuses == [500, 503, 200]
    assert [round(t - calls[0], 6) for t in calls] == [0, 5, 15]

    def refuse(url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        raise ConnectionRefusedError

    outbox2 = WebhookOutbox(max_attempts=3, backoff=1)
    sender2 = WebhookSender(outbox2, "http://receiver", SECRET, clock, post=refuse)
    failing = outbox2.enqueue("batch.failed", "batch_1", 0, clock.now())
    for _ in range(3):
        sender2.pump()
        clock.advance(100)
    assert failing.gave_up and failing.statuses == [None, None, None]


class _Receiver:
    """A real HTTP receiver: answers the queued statuses in order (then 200) and records each request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.event = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver.event:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.event.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with self.event:
            assert self.event.wait_for(lambda: len(self.received) >= count, timeout), self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver([500])
    yield r
    r.close()


def test_batch_completed_webhook_is_delivered_after_a_retry(
    sim: Simulator, sim_clock: FakeClock, client: OpenAI, longrun: Callable[..., Any], receiver: _Receiver
) -> None:
    longrun(webhook_url=receiver.url, webhook_secret=SECRET, webhook_backoff_seconds=30, batch_lines_per_second=100)
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(3))), endpoint=EP, completion_window="24h"
    )
    # Nobody polls: the sender's thread advances the lifecycle itself once the clock has moved.
    sim_clock.advance(10)
    receiver.wait_for(1)  # first attempt -> 500
    sim_clock.advance(30)  # the backoff, on the simulator's clock
    receiver.wait_for(2)  # retried -> 200
    first, second = receiver.received[0], receiver.received[1]
    assert first[0]["webhook-id"] == second[0]["webhook-id"]  # same event, retried
    event = client.webhooks.unwrap(second[1], second[0], secret=SECRET)
    assert event.type == "batch.completed"
    assert event.data.id == batch.id
    assert event.created_at == client.batches.retrieve(batch.id).completed_at


def test_response_events_for_completed_and_cancelled(
    sim: Simulator, sim_clock: FakeClock, client: OpenAI, longrun: Callable[..., Any]
) -> None:
    hook = _Receiver([])
    try:
        longrun(webhook_url=hook.url, webhook_secret=SECRET, response_queued_seconds=1, response_in_progress_seconds=1)
        done = client.responses.create(model="gpt-4o-mini", input="a", background=True)
        stopped = client.responses.create(model="gpt-4o-mini", input="b", background=True)
        client.responses.cancel(stopped.id)
        hook.wait_for(1)
        sim_clock.advance(5)
        hook.wait_for(2)
        events = [client.webhooks.unwrap(body, headers, secret=SECRET) for headers, body in hook.received]
        assert [(e.type, e.data.id) for e in events] == [
            ("response.cancelled", stopped.id),
            ("response.completed", done.id),
        ]
    finally:
        hook.close()
