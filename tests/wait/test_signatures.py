"""Webhook signatures and the receiver's rules: verified, fresh, not replayed -> acted on once; else 400."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from openai import OpenAI

from ratepilot.clock import FakeClock, SystemClock
from ratepilot.protocol.webhooks import WebhookVerificationError, new_secret, sign, verify_signature
from ratepilot.webhooks import WebhookEvent, WebhookReceiver

from .conftest import delivery, event_body


def test_valid_delivery_is_acted_on(secret: str, clock: FakeClock) -> None:
    seen: list[WebhookEvent] = []
    r = WebhookReceiver(secret, clock=clock, on_event=seen.append)
    body = event_body("batch_1")
    result = r.deliver(delivery(secret, clock, body), body)
    assert (result.status, result.reason) == (200, "ok")
    assert [e.object_id for e in seen] == ["batch_1"] and seen[0].type == "batch.completed"
    assert r.latest("batch_1") is seen[0]


@pytest.mark.parametrize(
    "case",
    ["tampered_body", "wrong_secret", "old_timestamp", "future_timestamp", "missing_header", "not_v1", "bad_ts"],
)
def test_bad_deliveries_get_400_and_change_nothing(secret: str, clock: FakeClock, case: str) -> None:
    r = WebhookReceiver(secret, clock=clock)
    sub = r.subscribe("batch_1")
    body = event_body("batch_1")
    headers = delivery(secret, clock, body)
    if case == "tampered_body":
        body = body.replace(b"batch_1", b"batch_2")
    elif case == "wrong_secret":
        headers = delivery(new_secret(), clock, body)
    elif case == "old_timestamp":
        headers = delivery(secret, clock, body, age=301)
    elif case == "future_timestamp":
        headers = delivery(secret, clock, body, age=-301)
    elif case == "missing_header":
        del headers["webhook-timestamp"]
    elif case == "not_v1":
        headers["webhook-signature"] = "v1a," + headers["webhook-signature"][3:]
    elif case == "bad_ts":
        headers["webhook-timestamp"] = "yesterday"
    result = r.deliver(headers, body)
    assert result.status == 400 and result.event is None
    assert r.events == [] and r.latest("batch_1") is None and r.latest("batch_2") is None
    assert not sub.woken and r.rejected == 1


def test_timestamp_tolerance_boundary(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    body = event_body("batch_1")
    assert r.deliver(delivery(secret, clock, body, age=300), body).status == 200


def test_replay_is_refused_and_not_acted_on_twice(secret: str, clock: FakeClock) -> None:
    seen: list[WebhookEvent] = []
    r = WebhookReceiver(secret, clock=clock, on_event=seen.append)
    body = event_body("batch_1")
    headers = delivery(secret, clock, body)
    assert r.deliver(headers, body).status == 200
    clock.advance(10)
    replay = r.deliver(dict(headers), body)
    assert (replay.status, replay.reason) == (400, "replayed webhook-id")
    assert len(seen) == 1 and len(r.events) == 1


def test_sender_retry_is_acknowledged_but_acted_on_once(secret: str, clock: FakeClock) -> None:
    # OpenAI (and the simulator) re-sign each retry with a fresh timestamp and the same webhook-id: only the
    # secret's holder can do that, so it is a duplicate to acknowledge (else the sender retries for 72 h).
    seen: list[WebhookEvent] = []
    r = WebhookReceiver(secret, clock=clock, on_event=seen.append)
    body = event_body("batch_1")
    first = delivery(secret, clock, body, webhook_id="evt_same")
    assert r.deliver(first, body).status == 200
    clock.advance(5)
    retry = r.deliver(delivery(secret, clock, body, webhook_id="evt_same"), body)
    assert retry.status == 200 and retry.duplicate
    # The same event id under another webhook-id is also a duplicate.
    again = r.deliver(delivery(secret, clock, body), body)
    assert again.status == 200 and again.duplicate
    assert len(seen) == 1


def test_replay_memory_is_bounded_by_the_tolerance(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    for i in range(50):
        body = event_body(f"batch_{i}")
        assert r.deliver(delivery(secret, clock, body), body).status == 200
        clock.advance(30)
    assert len(r._seen_deliveries) <= 11  # only deliveries still inside the 300 s window are remembered


def test_rotated_secrets_any_v1_signature_may_match(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    body = event_body("batch_1")
    headers = delivery(secret, clock, body)
    stale = sign(new_secret(), headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    headers["webhook-signature"] = f"{stale} v2,abc {headers['webhook-signature']}"
    assert r.deliver(headers, body).status == 200


def test_signed_garbage_body_is_400(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    body = b"not json"
    assert r.deliver(delivery(secret, clock, body), body).status == 400
    assert r.events == []


def test_malformed_secret_fails_at_construction_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not valid base64") as info:
        WebhookReceiver("whsec_!!!notbase64secretvalue")
    assert "notbase64secretvalue" not in str(info.value)


def test_signatures_match_the_official_sdk(secret: str) -> None:
    # The SDK's verifier is the reference implementation; it reads real time, so sign with real time here.
    body = event_body("batch_sdk")
    ts = int(time.time())
    headers = {
        "webhook-id": "evt_sdk",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "evt_sdk", ts, body),
    }
    with OpenAI(api_key="sk-test-webhooks", base_url="http://127.0.0.1:9/v1") as client:
        client.webhooks.verify_signature(body, headers, secret=secret)  # raises if it disagrees
        event = client.webhooks.unwrap(body, headers, secret=secret)
        assert event.type == "batch.completed" and event.data.id == "batch_sdk"
    verify_signature(secret, headers, body, now=time.time())


def test_simulator_sender_signs_like_the_receiver_expects(secret: str, clock: FakeClock) -> None:
    sim_webhooks = pytest.importorskip("ratepilot.sim.longrun.webhooks")
    body = event_body("batch_sim")
    ts = int(clock.wall())
    assert sim_webhooks.sign(secret, "evt_x", ts, body) == sign(secret, "evt_x", ts, body)


def test_raw_secret_without_prefix_is_used_as_text_like_the_sdk(clock: FakeClock) -> None:
    body = event_body("batch_1")
    ts = int(clock.wall())
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign("plain-secret", "m", ts, body),
    }
    assert verify_signature("plain-secret", headers, body, now=clock.wall()) == ("m", ts)
    # ... and the whsec_ form of the same key bytes is the same secret.
    same = "whsec_" + base64.b64encode(b"plain-secret").decode()
    assert verify_signature(same, headers, body, now=clock.wall()) == ("m", ts)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_signature("other-secret", headers, body, now=clock.wall())


async def test_asgi_endpoint_answers_200_and_400(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    body = event_body("resp_1", "response.completed")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://receiver") as http:
        ok = await http.post("/webhooks/openai", content=body, headers=delivery(secret, clock, body))
        bad = await http.post("/", content=body, headers=delivery(new_secret(), clock, body))
        wrong_method = await http.get("/")
        huge = await http.post("/", content=b"x" * (2 << 20), headers=delivery(secret, clock, b"x"))
    assert ok.status_code == 200 and ok.json() == {"ok": True, "duplicate": False}
    assert bad.status_code == 400 and bad.json() == {"error": "no matching v1 signature"}
    assert wrong_method.status_code == 405
    assert huge.status_code == 413
    assert [e.object_id for e in r.events] == ["resp_1"]


def test_a_thread_blocked_on_the_real_clock_is_woken_by_a_delivery(secret: str) -> None:
    import threading

    clock = SystemClock()
    r = WebhookReceiver(secret)
    sub = r.subscribe("batch_t")
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(sub.wait(30.0, clock)))
    waiter.start()
    body = event_body("batch_t")
    assert r.deliver(delivery(secret, clock, body), body).status == 200
    waiter.join(10)
    assert result == [True] and sub.event is not None and sub.event.object_id == "batch_t"
    sub.close()
    assert r._subs == {}


async def test_an_asyncio_waiter_is_woken_from_another_thread(secret: str, clock: FakeClock) -> None:
    import asyncio

    r = WebhookReceiver(secret, clock=clock)
    sub = r.subscribe("resp_a")
    task = asyncio.create_task(sub.wait_async(None, clock))
    await asyncio.sleep(0)
    body = event_body("resp_a", "response.completed")
    # uvicorn's loop runs on another thread than the waiter's: deliver from one.
    delivered = await asyncio.to_thread(r.deliver, delivery(secret, clock, body), body)
    assert delivered.status == 200
    assert await asyncio.wait_for(task, 10) is True


async def test_async_wait_times_out_on_the_injected_clock(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    with r.subscribe("batch_never") as sub:
        start = clock.now()
        assert await sub.wait_async(120.0, clock) is False
        assert clock.now() - start == 120.0


@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_an_autojumping_clock_does_not_leap_over_an_event_to_the_deadline(
    secret: str, driver: str, alarm_clock: Callable[[float, Callable[[], object]], FakeClock]
) -> None:
    # A webhook lands 10 s (of the injected clock) into a wait with a 1 h deadline: both drivers sleep in
    # slices, so they wake at 10 s on the event instead of jumping to 3600 s and ending on the timeout.
    r = WebhookReceiver(secret)
    body = event_body("batch_late")
    headers = delivery(secret, SystemClock(), body)
    clock = alarm_clock(10.0, lambda: r.deliver(headers, body))
    with r.subscribe("batch_late") as sub:
        start = clock.now()
        woken = sub.wait(3600.0, clock) if driver == "sync" else await sub.wait_async(3600.0, clock)
        assert woken is True and sub.event is not None and sub.event.object_id == "batch_late"
        assert clock.now() - start == 10.0


def test_an_event_that_arrived_before_the_wait_is_not_lost(secret: str, clock: FakeClock) -> None:
    r = WebhookReceiver(secret, clock=clock)
    body = event_body("batch_early")
    r.deliver(delivery(secret, clock, body), body)
    with r.subscribe("batch_early") as sub:
        assert sub.woken and sub.wait(0.0, clock)


async def test_hostile_deliveries_are_refused_without_a_500_or_buffering(secret: str, clock: FakeClock) -> None:
    """An absurd timestamp, a signed body nested thousands deep, a chunked body of many MiB with no
    content-length: 400, 400 and 413 — the last cut off while streaming, never buffered whole."""
    r = WebhookReceiver(secret, clock=clock)
    sent = [0]

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(64):  # 64 MiB offered; the receiver must stop reading after 1 MiB
            sent[0] += 1
            yield b"x" * (1 << 20)

    deep = b"[" * 5000 + b"]" * 5000
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=r), base_url="http://receiver") as http:
        absurd = dict(delivery(secret, clock, b"{}"))
        absurd["webhook-timestamp"] = "9" * 4000
        bad_ts = await http.post("/", content=b"{}", headers=absurd)
        nested = await http.post("/", content=deep, headers=delivery(secret, clock, deep))
        chunked = await http.post("/", content=endless(), headers=delivery(secret, clock, b"x"))
    assert bad_ts.status_code == 400 and "plausible" in bad_ts.json()["error"]
    assert nested.status_code == 400
    assert chunked.status_code == 413
    assert sent[0] < 64
