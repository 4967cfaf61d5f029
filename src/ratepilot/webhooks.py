"""Receiving OpenAI webhooks so that waiting needs no polling at all.

:class:`WebhookReceiver` is an ASGI app (mount it anywhere, or run ``ratepilot webhooks serve``). Each
delivery is verified (Standard Webhooks: signature, timestamp within the tolerance, not a replay of a
delivery already seen) before anything is acted on; a bad one gets a 400 and changes nothing. A good one is
answered at once (no I/O in the handler: the sender only needs a fast 2xx), de-duplicated (a sender retry is
acknowledged but acted on once), remembered per object id, and wakes every waiter on that object, whether
it is a thread (:func:`ratepilot.poll.wait`) or an asyncio task (:func:`ratepilot.poll.wait_async`) on any
event loop.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .clock import Clock, SystemClock, Wakeup
from .protocol.webhooks import DEFAULT_TOLERANCE, WebhookVerificationError, decode_secret, verify_signature
from .serving import BackgroundServer, bind_socket

__all__ = ["Delivery", "ReceiverServer", "Subscription", "WebhookEvent", "WebhookReceiver"]

MAX_BODY_BYTES = 1 << 20  # OpenAI's event bodies are small (ids, not payloads); refuse anything huge


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One verified event: ``{"object": "event", "id": "evt_...", "type": "batch.completed", "data": {"id": ...}}``."""

    webhook_id: str
    id: str
    type: str
    created_at: int | None
    object_id: str | None
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "id": self.id,
            "type": self.type,
            "created_at": self.created_at,
            "object_id": self.object_id,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one delivery: the HTTP status answered and why (``event`` set when acted on)."""

    status: int
    reason: str
    event: WebhookEvent | None = None
    duplicate: bool = False


class Subscription:
    """A waiter's interest in one object id; woken by the first event for it (or one received earlier).

    Thread-safe: a receiver running on uvicorn's loop thread may wake it while a sync waiter blocks in
    :meth:`wait` or an async waiter awaits :meth:`wait_async` on another loop. ``wakeup`` is the clock's
    :class:`~ratepilot.clock.Wakeup` it sets, for waiting on several subscriptions at once
    (:func:`ratepilot.clock.any_of`).
    """

    def __init__(self, receiver: WebhookReceiver, object_id: str) -> None:
        self._receiver = receiver
        self.object_id = object_id
        self.wakeup = Wakeup()
        self._lock = threading.Lock()
        self.event: WebhookEvent | None = None

    def _wake(self, event: WebhookEvent) -> None:
        with self._lock:
            self.event = event  # before the wake-up: a woken waiter finds the event
            self.wakeup.set()

    @property
    def woken(self) -> bool:
        return self.wakeup.is_set()

    def rearm(self) -> None:
        """Forget the last wake-up, to wait for a later event about the same object (used by batch runners)."""
        with self._lock:
            self.wakeup.clear()
            self.event = None

    def wait(self, timeout: float | None, clock: Clock) -> bool:
        """Block until woken (True) or ``timeout`` seconds of ``clock`` time pass (False)."""
        return clock.wait(self.wakeup, timeout)

    async def wait_async(self, timeout: float | None, clock: Clock) -> bool:
        """Await until woken (True) or ``timeout`` seconds of ``clock`` time pass (False)."""
        return await clock.wait_async(self.wakeup, timeout)

    def close(self) -> None:
        self._receiver._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebhookReceiver:
    """ASGI app receiving OpenAI webhooks for one signing secret; wakes :func:`ratepilot.poll.wait` callers.

    ``WebhookReceiver(secret)`` with the endpoint's ``whsec_...`` secret. POST to any path. ``on_event`` is
    called (on the server's thread, keep it quick) for every new verified event, ``on_reject`` with the reason
    of every refused one. ``clock`` supplies the
    unix time the timestamp tolerance is checked against (a simulator on a fake clock signs with its own).
    """

    def __init__(
        self,
        secret: str,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        clock: Clock | None = None,
        on_event: Callable[[WebhookEvent], object] | None = None,
        on_reject: Callable[[str], object] | None = None,
        remember: int = 10_000,
    ) -> None:
        self._key = decode_secret(secret)  # fails fast on a malformed secret, before any request
        self.tolerance = tolerance
        self.clock = clock or SystemClock()
        self.on_event = on_event
        self.on_reject = on_reject
        self._remember = remember
        self._lock = threading.Lock()
        # (webhook-id, timestamp) of every verified delivery still inside the tolerance window -> timestamp
        self._seen_deliveries: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._acted_ids: OrderedDict[str, None] = OrderedDict()  # webhook-ids acted on
        self._seen_events: OrderedDict[str, None] = OrderedDict()  # event ids acted on
        self._latest: OrderedDict[str, WebhookEvent] = OrderedDict()  # object id -> last event for it
        self._subs: dict[str, list[Subscription]] = {}
        self.events: list[WebhookEvent] = []  # acted-on events, oldest first (bounded by ``remember``)
        self.rejected = 0
        self._app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["POST"])])

    # -- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    async def _endpoint(self, request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        # The limit is enforced while reading: an unauthenticated sender streaming a chunked body of gigabytes
        # is cut off at MAX_BODY_BYTES, never buffered whole.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return JSONResponse({"error": "body too large"}, status_code=413)
            chunks.append(chunk)
        body = b"".join(chunks)
        result = self.deliver(request.headers, body)
        if result.status >= 400:
            return JSONResponse({"error": result.reason}, status_code=result.status)
        return JSONResponse({"ok": True, "duplicate": result.duplicate}, status_code=result.status)

    # -- sans-HTTP core

    def deliver(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        """Verify one delivery and act on it; the ASGI endpoint is a thin wrapper around this."""
        now = self.clock.wall()
        try:
            webhook_id, timestamp = verify_signature(self._key, headers, body, now=now, tolerance=self.tolerance)
        except WebhookVerificationError as exc:
            return self._reject(exc.reason)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # (a body nested thousands deep: signed, but not an event)
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            return self._reject("body is not a JSON event object")
        raw_data = payload.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        object_id = data.get("id") if isinstance(data.get("id"), str) else None
        created = payload.get("created_at")
        event = WebhookEvent(
            webhook_id=webhook_id,
            id=str(payload.get("id") or webhook_id),
            type=payload["type"],
            created_at=created if isinstance(created, int) else None,
            object_id=object_id,
            data=data,
        )
        subs: list[Subscription] = []
        with self._lock:
            self._forget_expired(now)
            if (webhook_id, timestamp) in self._seen_deliveries:
                # The very same signed delivery again (same id, same timestamp) inside the tolerance window:
                # a replay. Refused; nothing is acted on.
                verdict = "replay"
            elif webhook_id in self._acted_ids or event.id in self._seen_events:
                # The sender's retry of a delivery we already took (it re-signs each attempt with a fresh
                # timestamp, which only the secret's holder can do): acknowledge so it stops, act once.
                verdict = "duplicate"
            else:
                verdict = "new"
                self._acted_ids[webhook_id] = None
                _trim(self._acted_ids, self._remember)
                self._seen_events[event.id] = None
                _trim(self._seen_events, self._remember)
                self.events.append(event)
                if len(self.events) > self._remember:
                    del self.events[: len(self.events) - self._remember]
                if object_id is not None:
                    self._latest[object_id] = event
                    self._latest.move_to_end(object_id)
                    _trim(self._latest, self._remember)
                    subs = list(self._subs.get(object_id, ()))
            if verdict != "replay":
                self._seen_deliveries[(webhook_id, timestamp)] = timestamp
        if verdict == "replay":
            return self._reject("replayed webhook-id")
        if verdict == "duplicate":
            return Delivery(200, "duplicate event", event, duplicate=True)
        for sub in subs:
            sub._wake(event)
        if self.on_event is not None:
            self.on_event(event)
        return Delivery(200, "ok", event)

    def _reject(self, reason: str) -> Delivery:
        with self._lock:
            self.rejected += 1
        if self.on_reject is not None:
            self.on_reject(reason)
        return Delivery(400, reason)

    def _forget_expired(self, now: float) -> None:
        # A delivery older than the tolerance can never verify again (its timestamp is signed), so the
        # replay memory only has to span the tolerance window (entries arrive in roughly timestamp order).
        while self._seen_deliveries:
            oldest, ts = next(iter(self._seen_deliveries.items()))
            if now - ts <= self.tolerance and len(self._seen_deliveries) <= self._remember:
                break
            del self._seen_deliveries[oldest]

    # -- waiters

    def subscribe(self, object_id: str) -> Subscription:
        """Interest in ``object_id``; already woken if an event for it arrived before (no race with create)."""
        sub = Subscription(self, object_id)
        with self._lock:
            self._subs.setdefault(object_id, []).append(sub)
            earlier = self._latest.get(object_id)
        if earlier is not None:
            sub._wake(earlier)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.object_id)
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs[sub.object_id]

    def latest(self, object_id: str) -> WebhookEvent | None:
        """The last verified event about ``object_id``, if any."""
        with self._lock:
            return self._latest.get(object_id)


def _trim(d: OrderedDict[Any, Any], size: int) -> None:
    while len(d) > size:
        d.popitem(last=False)


class ReceiverServer:
    """Serve a :class:`WebhookReceiver` with uvicorn on a background thread (tests, benchmarks, embedding).

    ``with ReceiverServer(receiver) as server: server.url`` -> ``http://127.0.0.1:<free port>/``. The CLI's
    ``ratepilot webhooks serve`` runs uvicorn in the foreground instead.
    """

    def __init__(self, receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 0) -> None:
        self.receiver = receiver
        self.host = host
        self.port = port
        self._background: BackgroundServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> ReceiverServer:
        import uvicorn

        if self._background is not None:
            return self
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.receiver, lifespan="off", access_log=False, log_level="warning", log_config=None)
        background = BackgroundServer(uvicorn.Server(config), sock, f"ratepilot-webhooks-{self.port}")
        try:
            background.start(timeout)
        except RuntimeError:
            raise RuntimeError(f"the webhook receiver did not start on {self.url}") from None
        self._background = background
        return self

    def stop(self) -> None:
        if self._background is not None:
            self._background.stop()
            self._background = None

    def __enter__(self) -> ReceiverServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
