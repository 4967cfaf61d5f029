"""The simulator's ASGI app: a raw ASGI hot path for the model endpoints, Starlette for everything else.

Request pipeline of a model endpoint (one served online by the registry, :mod:`ratepilot.sim.endpoints`):

1. ``state.longrun.advance()`` (lifecycles advance lazily from the clock);
2. authentication (401, not counted);
3. body: size limit (413), JSON (400), validation with ``param`` (400), model (404) — these errors still
   cost one request;
4. admission: credit (429 with code ``quota_error_code``, ``insufficient_quota`` by default), then
   RPM/TPM/RPD/TPD (and their quantum buckets; the project's too, for a key of a project with limits) with the
   admission cost of :func:`ratepilot.protocol.tokens.admission_cost` (429 ``rate_limit_exceeded`` /
   "Request too large"), then the ramp limit (429 ``slow_down``);
5. injected faults (500, 503, dropped connection, stall; missing headers);
6. the responder, usage by the real tokenizer; the token buckets are corrected to the actual usage
   (``settle``) and the org is billed;
7. latency (only when configured: with zero latency nothing is awaited), then the response.

Every response, whichever route produced it, gets ``x-request-id``, ``openai-version``,
``openai-processing-ms``, ``openai-organization`` (once the key is known) and the ``x-ratelimit-*`` headers
of the bucket the request was charged to — added in one place, the ``send`` wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..protocol.errors import error_body, model_not_found_error, server_error
from ..protocol.pricing import served_tier
from . import longrun
from .content import Generated
from .endpoints import ONLINE_ENDPOINTS, Endpoint
from .state import RequestContext, SimState
from .validation import ApiError, invalid_json, invalid_url

__all__ = ["SimApp", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("ratepilot.sim")

OPENAI_VERSION = b"2020-10-01"
_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_PIECES = re.compile(r"\S+\s*|\s+")


class _Dropped(Exception):
    """Raised inside a handler to abandon the response mid-body (the "dropped connection" fault)."""


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        error_body(
            f"Request body too large: {size} bytes exceeds the maximum of {limit} bytes.",
            "invalid_request_error",
            "request_too_large",
        ),
    )


def _after_action(send: Send, fault: str) -> Send:
    """A ``send`` for a handler that has acted: its answer becomes a 500/503, or is cut off halfway (drop)."""

    async def faulty(message: Message) -> None:
        if message["type"] == "http.response.start":
            if fault == "drop":
                await send(message)
            return
        if message["type"] != "http.response.body":
            return
        if fault == "drop":
            data = message.get("body", b"")
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            raise _Dropped
        if not message.get("more_body"):
            await SimApp._send_json(send, int(fault), server_error(overloaded=fault == "503"))

    return faulty


class SimApp:
    """The ASGI callable. ``create_app(state)`` builds one."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._online = ONLINE_ENDPOINTS
        self.fallback = Starlette(
            routes=longrun.routes(state),
            exception_handlers={HTTPException: self._http_exception},
        )

    # -- ASGI entry ---------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        state = self.state
        ctx, token = state.begin_request()
        started = False
        counted = not scope["path"].startswith("/sim/")  # introspection is not traffic

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = self._headers(ctx, list(message.get("headers") or []))
                if counted:
                    state.note_status(int(message["status"]))
            await send(message)

        try:
            attached = state.longrun
            if attached is not None:
                attached.advance()
            await self._dispatch(scope, receive, send_with_headers)
        except _Dropped:
            pass  # return with the body incomplete: uvicorn closes the connection
        except Exception:
            log.exception("simulator internal error")
            state.note_fault("internal_error")
            if not started:
                await self._send_json(send_with_headers, 500, server_error())
        finally:
            state.end_request(token)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _headers(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in headers}
        extra = [
            (b"x-request-id", ctx.request_id.encode()),
            (b"openai-version", OPENAI_VERSION),
            (b"openai-processing-ms", str(int((time.perf_counter() - ctx.started) * 1000)).encode()),
        ]
        if ctx.org and self.state.config.organization_header:
            extra.append((b"openai-organization", ctx.org.encode()))
            if ctx.project:
                extra.append((b"openai-project", ctx.project.encode()))
        for name, value in self.state.ratelimit_headers().items():
            extra.append((name.encode(), value.encode()))
        headers.extend(h for h in extra if h[0] not in present)
        return headers

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "POST":
            endpoint = self._online.get(path)
            if endpoint is not None:
                await self._model_endpoint(scope, receive, send, endpoint)
                return
            if path == "/sim/reset":
                self.state.reset()
                await self._send_json(send, 200, {"ok": True})
                return
        elif method == "GET":
            if path == "/v1/models" or path.startswith("/v1/models/"):
                await self._models(scope, send, path)
                return
            if path == "/sim/stats":
                await self._send_json(send, 200, self.state.stats())
                return
        if path in self._online or path in ("/v1/models", "/sim/stats", "/sim/reset"):
            await self._send_error(send, invalid_url(method, path, 405))
            return
        fault = self.state.draw_fault() if self.state.config.faults.all_endpoints and path.startswith("/v1/") else None
        if fault in ("500", "503") and method != "POST":
            await self._send_json(send, int(fault), server_error(overloaded=fault == "503"))
            return
        if fault in ("500", "503", "drop"):
            # The worst case for a client: the object was created (a file uploaded, a batch created) and the
            # answer is an error or is cut off. Retrying blindly creates it twice.
            await self.fallback(scope, receive, _after_action(send, fault))
            return
        await self.fallback(scope, receive, send)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        error = invalid_url(request.method, request.url.path, status if status in (404, 405) else 404)
        if status not in (404, 405):
            error = ApiError(status, error_body(str(getattr(exc, "detail", "")) or "Error", "invalid_request_error"))
        return self.state.error_response(error)

    # -- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        raw = [_JSON, (b"content-length", str(len(data)).encode())]
        if headers:
            raw.extend((k.encode(), v.encode()) for k, v in headers.items())
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    async def _send_error(self, send: Send, error: ApiError) -> None:
        await self._send_json(send, error.status, error.body, error.headers)

    @staticmethod
    def _header(scope: Scope, name: bytes) -> str | None:
        for key, value in scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.state.config.max_body_bytes
        declared = self._header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Dropped
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- endpoints --------------------------------------------------------------------------------------

    async def _models(self, scope: Scope, send: Send, path: str) -> None:
        state = self.state
        try:
            ident = state.identify(self._header(scope, b"authorization"))
        except ApiError as exc:
            await self._send_error(send, exc)
            return
        state.note_request(ident)
        error = state.admit_request(ident.org, None, 0, "/v1/models")
        if error is not None:
            await self._send_error(send, error)
            return
        created = 1_700_000_000
        if path == "/v1/models" or path == "/v1/models/":
            data = [{"id": m.id, "object": "model", "created": created, "owned_by": m.owned_by} for m in state.models]
            await self._send_json(send, 200, {"object": "list", "data": data})
            return
        model_id = path[len("/v1/models/") :]
        spec = state.model(model_id)
        if spec is None:
            await self._send_json(send, 404, model_not_found_error(model_id))
            return
        await self._send_json(
            send, 200, {"id": spec.id, "object": "model", "created": created, "owned_by": spec.owned_by}
        )

    async def _model_endpoint(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        state = self.state
        try:
            ident = state.identify(self._header(scope, b"authorization"))
        except ApiError as exc:
            await self._send_error(send, exc)
            return
        state.note_request(ident)
        org = ident.org
        body: Any = None
        try:
            raw = await self._read_body(scope, receive)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise invalid_json() from None
            spec = state.validated_model(endpoint, body)
        except ApiError as exc:
            model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
            state.count_request(org, model)
            await self._send_error(send, exc)
            return
        path = endpoint.path
        if endpoint.background and body.get("background") is True:
            await self._background(send, org, spec.id, endpoint, body)
            return
        cost = endpoint.admission(path, body)
        error = state.admit_request(org, spec.id, cost, path)
        if error is not None:
            await self._send_error(send, error)
            return
        tier = served_tier(body.get("service_tier")) if endpoint.tiered else None
        if tier == "flex":
            refusal = state.flex_refusal(org, spec.id, cost)
            if refusal is not None:
                await self._send_error(send, refusal)
                return
        fault = state.draw_fault()
        if fault == "500" or fault == "503":
            await self._send_json(send, int(fault), server_error(overloaded=fault == "503"))
            return
        try:
            generated = endpoint.respond(state.config, spec, body, state.new_id, int(state.clock.wall()))
        except ApiError as exc:
            state.settle(org, spec.id, cost, 0)  # rejected after admission: its tokens are returned
            await self._send_error(send, exc)
            return
        if tier is not None:
            generated.body["service_tier"] = tier  # the tier that served it, as the real API reports
        state.complete(org, spec.id, cost, generated.body.get("usage") or {}, generated.total_tokens, tier)
        if fault == "stall":
            await self._stall(receive)
        if endpoint.stream is not None and body.get("stream") is True:
            await self._stream(send, endpoint.stream == "chat", body, generated, fault == "drop")
            return
        latency = state.config.latency
        ms = 0.0
        if not latency.zero:
            ms = (latency.base_ms + latency.per_token_ms * generated.completion_tokens) * state.latency_jitter()
        if tier == "flex":
            ms += state.config.flex_latency_ms
        elif tier == "priority":
            ms *= state.config.priority_latency_factor
        if ms > 0:
            await asyncio.sleep(ms / 1000)
        data = orjson.dumps(generated.body)
        headers = [_JSON, (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if fault == "drop":
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            raise _Dropped
        await send({"type": "http.response.body", "body": data})

    async def _background(self, send: Send, org: str, model: str, endpoint: Endpoint, body: Any) -> None:
        longrun = self.state.longrun
        if longrun is None:
            await self._send_error(
                send,
                ApiError(
                    400,
                    error_body("Background responses are not supported.", "invalid_request_error", None, "background"),
                ),
            )
            return
        error = self.state.admit_request(org, model, endpoint.admission(endpoint.path, body), endpoint.path)
        if error is not None:
            await self._send_error(send, error)
            return
        status, out = longrun.create_background_response(org, body)
        await self._send_json(send, status, out)

    async def _stall(self, receive: Receive) -> None:
        """Withhold the response for ``faults.stall_s`` or until the client gives up, whichever is first."""
        try:
            async with asyncio.timeout(self.state.config.faults.stall_s):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            return
        raise _Dropped

    async def _stream(self, send: Send, chat: bool, body: Any, generated: Generated, drop: bool) -> None:
        """SSE chunks: chat-completion chunks (``chat``) or text-completion chunks."""
        state = self.state
        out = generated.body
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        n = len(out["choices"])
        finish = out["choices"][0]["finish_reason"]
        base: dict[str, Any] = {
            "id": out["id"],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": out["created"],
            "model": out["model"],
            "system_fingerprint": out.get("system_fingerprint"),
        }
        if include_usage:
            base["usage"] = None

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            return b"data: " + orjson.dumps({**base, "choices": choices}) + b"\n\n"

        def piece_choice(i: int, text: str | None, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta = {"role": "assistant", "content": "", "refusal": None}
                elif text is not None:
                    delta = {"content": text}
                return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {"text": text or "", "index": i, "logprobs": None, "finish_reason": finish_reason}

        events: list[bytes] = []
        if chat:
            events.append(chunk([piece_choice(i, None, None, role=True) for i in range(n)]))
        pieces = _PIECES.findall(generated.text)
        for piece in pieces:
            events.append(chunk([piece_choice(i, piece, None) for i in range(n)]))
        events.append(chunk([piece_choice(i, None if chat else "", finish) for i in range(n)]))
        if include_usage:
            events.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": out["usage"]}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")

        latency = state.config.latency
        per_piece = 0.0
        if not latency.zero:
            jitter = state.latency_jitter()
            await asyncio.sleep(latency.base_ms * jitter / 1000)
            if pieces:
                per_piece = latency.per_token_ms * jitter * generated.completion_tokens / max(1, n) / len(pieces) / 1000
        await send({"type": "http.response.start", "status": 200, "headers": [_SSE, (b"cache-control", b"no-cache")]})
        cut = len(events) // 2 if drop else len(events)
        for i, event in enumerate(events[:cut]):
            if per_piece and 0 < i <= len(pieces):
                await asyncio.sleep(per_piece)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if drop:
            raise _Dropped
        await send({"type": "http.response.body", "body": b""})


def create_app(state: SimState) -> SimApp:
    """The simulator's ASGI app over ``state`` (includes ``sim.longrun.routes(state)``)."""
    return SimApp(state)
