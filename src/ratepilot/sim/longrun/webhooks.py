"""Webhooks the simulator sends: Standard-Webhooks signing, a sans-IO outbox with retry backoff, and a
small sender thread.

The outbox decides *when* each event is (re)tried on the simulator's clock; the sender does the HTTP POSTs.
Tests drive :meth:`WebhookSender.pump` directly (and advance a ``FakeClock`` to reach a retry), so no test
waits for a backoff in real time.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...clock import Clock
from ...protocol import webhooks as protocol_webhooks
from .ids import new_id

__all__ = [
    "Delivery",
    "HttpPost",
    "WebhookOutbox",
    "WebhookSender",
    "event_body",
    "sign",
    "urllib_post",
]

HttpPost = Callable[[str, dict[str, str], bytes, float], int]
"""``(url, headers, body, timeout) -> HTTP status`` (raise ``OSError`` for a connection failure)."""


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` (the shared :mod:`ratepilot.protocol.webhooks`)."""
    return protocol_webhooks.sign(secret, message_id, timestamp, body)


def event_body(event_id: str, event_type: str, object_id: str, created_at: int) -> bytes:
    return orjson.dumps(
        {"id": event_id, "object": "event", "type": event_type, "created_at": created_at, "data": {"id": object_id}}
    )


@dataclass
class Delivery:
    """One event on its way to the receiver."""

    event_id: str
    event_type: str
    body: bytes
    next_at: float
    attempts: int = 0
    statuses: list[int | None] = field(default_factory=list)  # one per attempt; None = no HTTP answer
    done: bool = False
    gave_up: bool = False


class WebhookOutbox:
    """Events waiting to be delivered, each with its next attempt time (sans-IO)."""

    def __init__(self, *, max_attempts: int = 8, backoff: float = 5.0, backoff_max: float = 3_600.0) -> None:
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()

    def enqueue(self, event_type: str, object_id: str, created_at: int, now: float) -> Delivery:
        event_id = new_id("evt")
        delivery = Delivery(event_id, event_type, event_body(event_id, event_type, object_id, created_at), now)
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def due(self, now: float) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if not d.done and d.next_at <= now]

    def next_due(self) -> float | None:
        with self._lock:
            times = [d.next_at for d in self.deliveries if not d.done]
        return min(times) if times else None

    def record(self, delivery: Delivery, status: int | None, now: float) -> None:
        """An attempt ended with ``status``; 2xx is delivered, anything else retries with exponential backoff."""
        with self._lock:
            delivery.attempts += 1
            delivery.statuses.append(status)
            if status is not None and 200 <= status < 300:
                delivery.done = True
            elif delivery.attempts >= self.max_attempts:
                delivery.done = delivery.gave_up = True
            else:
                delay = min(self.backoff * 2 ** (delivery.attempts - 1), self.backoff_max)
                delivery.next_at = now + delay


def urllib_post(url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


class WebhookSender:
    """Posts due deliveries. :meth:`pump` is one synchronous pass; :meth:`wake` runs a background thread that
    also calls ``on_idle_tick`` (the simulator's lazy clock advance) so events fire without anyone polling.

    The signing timestamp is real time (``wall``, default ``time.time``): receivers check it against their own
    clock with a 300 s tolerance, whatever the simulator's clock says.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        url: str,
        secret: str,
        clock: Clock,
        *,
        post: HttpPost = urllib_post,
        wall: Callable[[], float] = time.time,
        timeout: float = 5.0,
        on_idle_tick: Callable[[], bool] | None = None,
        poll_interval: float = 0.02,
        idle_exit: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.url = url
        self.secret = secret
        self.clock = clock
        self.post = post
        self.wall = wall
        self.timeout = timeout
        self.on_idle_tick = on_idle_tick
        self.poll_interval = poll_interval
        self.idle_exit = idle_exit
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def headers_for(self, delivery: Delivery) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "user-agent": "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)",
            **protocol_webhooks.signature_headers(self.secret, delivery.event_id, int(self.wall()), delivery.body),
        }

    def pump(self) -> int:
        """Attempt every delivery due now; returns how many attempts were made."""
        attempts = 0
        for delivery in self.outbox.due(self.clock.now()):
            started = self.clock.now()  # backoff counts from the attempt's start, as a scheduler would
            status: int | None
            try:
                status = self.post(self.url, self.headers_for(delivery), delivery.body, self.timeout)
            except (OSError, ValueError):
                status = None
            self.outbox.record(delivery, status, started)
            attempts += 1
        return attempts

    # -- background driver -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Make sure the sender thread runs (it exits by itself after ``idle_exit`` s with nothing to do)."""
        self._wakeup.set()
        with self._thread_lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="ratepilot-sim-webhooks", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wakeup.set()
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while not self._stop.is_set():
            busy = self.on_idle_tick() if self.on_idle_tick is not None else False
            sent = self.pump()
            pending = self.outbox.next_due() is not None
            if busy or sent or pending:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.idle_exit:
                with self._thread_lock:
                    if not self._wakeup.is_set():
                        self._thread = None  # a later wake() starts a fresh thread
                        return
                idle_since = time.monotonic()
            self._wakeup.wait(self.poll_interval)
            self._wakeup.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "delivered": sum(1 for d in self.outbox.deliveries if d.done and not d.gave_up),
            "gave_up": sum(1 for d in self.outbox.deliveries if d.gave_up),
            "pending": sum(1 for d in self.outbox.deliveries if not d.done),
        }
