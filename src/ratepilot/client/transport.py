"""The httpx2 (and legacy httpx) transports through which every SDK call goes: the thin sync/async drivers.

Each driver is a short loop — acquire from the limiter, send with the original transport, read what must be
read, hand the outcome to the :class:`~ratepilot.client.exchange.Exchange`, then deliver, wait or raise. All
decisions live in the exchange and the retry policy, so sync and async cannot drift apart.

Bodies: error responses and the JSON bodies of generation calls are read here (they are small, and their
``usage`` settles the limiter); streamed (SSE) responses are wrapped so they settle from their usage chunk
when consumed or closed; everything else (file downloads, lists) passes through untouched.
"""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING, Any

import httpx2

from ..limits.types import Grant
from ..retry import FailureKind
from .exchange import Deliver, Exchange, Fail, Reraise, Step, Wait
from .plan import SSEUsageScanner

if TYPE_CHECKING:
    from .pilot import Pilot

__all__ = [
    "ATTEMPTS_HEADER",
    "WAITED_HEADER",
    "AsyncPilotTransport",
    "PilotTransport",
    "async_transport_class",
    "sync_transport_class",
]


# -- the HTTP library in use: httpx2, or legacy httpx when the user's http_client is one ---------------------


def _failure_kind(lib: Any, exc: BaseException) -> FailureKind | None:
    """Timeouts and connection failures are retryable; anything else (a bad URL, a bug) propagates."""
    if isinstance(exc, lib.TimeoutException):
        return FailureKind.TIMEOUT
    if isinstance(exc, (lib.NetworkError, lib.RemoteProtocolError, lib.ProxyError, ssl.SSLError)):
        return FailureKind.CONNECTION
    try:
        import anyio

        if isinstance(exc, anyio.EndOfStream):  # httpx2 may surface a dropped TLS stream as this
            return FailureKind.CONNECTION
    except ImportError:  # pragma: no cover - anyio ships with httpx2
        pass
    return None


def _decoded(lib: Any, headers: Any, raw: bytes) -> bytes | None:
    """The body as the SDK will see it (content-encoding undone), for parsing usage and errors."""
    encoding = (headers.get("content-encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    try:
        return bytes(lib.Response(200, headers={"content-encoding": encoding}, content=raw).content)
    except Exception:
        return None


def _is_json(headers: Any) -> bool:
    return "json" in (headers.get("content-type") or "").lower()


def _is_sse(headers: Any) -> bool:
    return "text/event-stream" in (headers.get("content-type") or "").lower()


def _wants_body(ex: Exchange, request: Any, headers: Any) -> bool:
    """Should a 2xx body be read here (rather than streamed through)?"""
    if _is_sse(headers):
        return False
    if ex.plan.generation:
        return True
    # Polls of runs, batches and background responses: small JSON objects whose usage the ledger records
    # once they finish.
    path = request.url.path
    return request.method == "GET" and _is_json(headers) and any(p in path for p in _ACCOUNTED_POLLS)


_ACCOUNTED_POLLS = ("/runs/", "/batches/", "/responses/")


@functools.cache
def _stream_classes(lib: Any) -> tuple[type[Any], type[Any]]:
    """Byte-stream wrappers that feed an SSE usage scanner and settle when the stream ends or is closed.

    Built per library because each client only accepts its own ``SyncByteStream``/``AsyncByteStream``.
    """

    class SettlingStream(lib.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, ex: Exchange, grant: Grant) -> None:
            self._inner, self._ex, self._grant = inner, ex, grant
            self._scanner = SSEUsageScanner()
            self._done = False

        def __iter__(self) -> Any:
            for chunk in self._inner:
                self._scanner.feed(chunk)
                yield chunk
            self._finish()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._finish()

        def _finish(self) -> None:
            if not self._done:
                self._done = True
                self._scanner.close()
                self._ex.finish(self._grant, self._scanner.usage)

    class AsyncSettlingStream(lib.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, ex: Exchange, grant: Grant) -> None:
            self._inner, self._ex, self._grant = inner, ex, grant
            self._scanner = SSEUsageScanner()
            self._done = False

        async def __aiter__(self) -> Any:
            async for chunk in self._inner:
                self._scanner.feed(chunk)
                yield chunk
            self._finish()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._finish()

        def _finish(self) -> None:
            if not self._done:
                self._done = True
                self._scanner.close()
                self._ex.finish(self._grant, self._scanner.usage)

    return SettlingStream, AsyncSettlingStream


def _rebuilt(lib: Any, response: Any, request: Any, raw: bytes) -> Any:
    return lib.Response(
        response.status_code,
        headers=response.headers,
        stream=lib.ByteStream(raw),
        extensions=response.extensions,
        request=request,
    )


ATTEMPTS_HEADER = "x-ratepilot-attempts"
WAITED_HEADER = "x-ratepilot-waited-ms"


def _annotated(response: Any, ex: Exchange) -> Any:
    """Tell raw-response users what ratepilot did (the SDK's own ``retries_taken`` is always 0 now)."""
    response.headers[ATTEMPTS_HEADER] = str(ex.attempt)
    response.headers[WAITED_HEADER] = str(round(ex.total_waited * 1000))
    return response


# -- the drivers ----------------------------------------------------------------------------------------------


def _outcome(
    ex: Exchange, lib: Any, request: Any, response: Any, grant: Grant, sent_at: float, raw: bytes | None
) -> tuple[Step, Any]:
    """Shared by both drivers once the body (if wanted) has been read: the exchange decides."""
    status = response.status_code
    if status >= 400:
        assert raw is not None
        step = ex.on_error_response(
            grant, status, response.headers, sent_at, _decoded(lib, response.headers, raw) or b""
        )
        return step, _rebuilt(lib, response, request, raw)
    if raw is not None:
        step = ex.on_success(grant, response.headers, sent_at, _decoded(lib, response.headers, raw))
        return step, _rebuilt(lib, response, request, raw)
    step = ex.on_success(grant, response.headers, sent_at, None)
    if ex.plan.generation:  # a streamed generation: settle from its usage chunk when it ends
        sync_cls, async_cls = _stream_classes(lib)
        cls = async_cls if isinstance(response.stream, lib.AsyncByteStream) else sync_cls
        response.stream = cls(response.stream, ex, grant)
    return step, response


def handle_sync(pilot: Pilot, inner: Any, lib: Any, request: Any) -> Any:
    body = request.read()
    ex = pilot._begin(request.method, request.url.path, request.headers, body)
    clock = pilot.clock
    grant: Grant | None = None
    try:
        while True:
            t0 = clock.now()
            grant = pilot.limiter.acquire(ex.scope, ex.cost, priority=ex.priority)
            ex.waited(clock.now() - t0)
            sent_at = clock.now()
            ex.sending()
            raw: bytes | None = None
            try:
                response = inner.handle_request(request)
                if response.status_code >= 400 or _wants_body(ex, request, response.headers):
                    try:
                        raw = b"".join(response.stream)
                    finally:
                        response.stream.close()
            except Exception as exc:
                kind = _failure_kind(lib, exc)
                if kind is None:
                    raise
                step: Step = ex.on_exception(grant, kind, exc)
                grant = None
                if isinstance(step, Reraise):
                    raise
            else:
                step, response = _outcome(ex, lib, request, response, grant, sent_at, raw)
                grant = None
                if isinstance(step, Deliver):
                    return _annotated(response, ex)
                response.close()
            if isinstance(step, Wait):
                clock.sleep(step.after)
                ex.waited(step.after, retry=True)
                continue
            assert isinstance(step, Fail)
            raise step.error from step.cause
    except BaseException:
        ex.abort(grant)
        raise


async def handle_async(pilot: Pilot, inner: Any, lib: Any, request: Any) -> Any:
    body = await request.aread()
    ex = pilot._begin(request.method, request.url.path, request.headers, body)
    clock = pilot.clock
    grant: Grant | None = None
    raw: bytes | None
    try:
        while True:
            t0 = clock.now()
            grant = await pilot.limiter.aacquire(ex.scope, ex.cost, priority=ex.priority)
            ex.waited(clock.now() - t0)
            sent_at = clock.now()
            ex.sending()
            raw = None
            try:
                response = await inner.handle_async_request(request)
                if response.status_code >= 400 or _wants_body(ex, request, response.headers):
                    try:
                        raw = b"".join([chunk async for chunk in response.stream])
                    finally:
                        await response.stream.aclose()
            except Exception as exc:
                kind = _failure_kind(lib, exc)
                if kind is None:
                    raise
                step: Step = ex.on_exception(grant, kind, exc)
                grant = None
                if isinstance(step, Reraise):
                    raise
            else:
                step, response = _outcome(ex, lib, request, response, grant, sent_at, raw)
                grant = None
                if isinstance(step, Deliver):
                    return _annotated(response, ex)
                await response.aclose()
            if isinstance(step, Wait):
                await clock.asleep(step.after)
                ex.waited(step.after, retry=True)
                continue
            assert isinstance(step, Fail)
            raise step.error from step.cause
    except BaseException:
        ex.abort(grant)
        raise


# -- the transport classes ------------------------------------------------------------------------------------


class PilotTransport(httpx2.BaseTransport):
    """Wraps the SDK's httpx2 transport: every request is throttled, retried, classified and accounted."""

    def __init__(self, pilot: Pilot, inner: httpx2.BaseTransport) -> None:
        self.pilot = pilot
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = handle_sync(self.pilot, self.inner, httpx2, request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncPilotTransport(httpx2.AsyncBaseTransport):
    def __init__(self, pilot: Pilot, inner: httpx2.AsyncBaseTransport) -> None:
        self.pilot = pilot
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = await handle_async(self.pilot, self.inner, httpx2, request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@functools.cache
def sync_transport_class(lib: Any) -> type[Any]:
    """The sync transport class for ``lib`` (httpx2, or the legacy httpx module)."""
    if lib is httpx2:
        return PilotTransport

    class LegacyPilotTransport(lib.BaseTransport):  # type: ignore[misc]
        def __init__(self, pilot: Pilot, inner: Any) -> None:
            self.pilot = pilot
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            return handle_sync(self.pilot, self.inner, lib, request)

        def close(self) -> None:
            self.inner.close()

    return LegacyPilotTransport


@functools.cache
def async_transport_class(lib: Any) -> type[Any]:
    if lib is httpx2:
        return AsyncPilotTransport

    class LegacyAsyncPilotTransport(lib.AsyncBaseTransport):  # type: ignore[misc]
        def __init__(self, pilot: Pilot, inner: Any) -> None:
            self.pilot = pilot
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            return await handle_async(self.pilot, self.inner, lib, request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return LegacyAsyncPilotTransport
