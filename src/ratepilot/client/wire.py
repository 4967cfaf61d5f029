"""What the HTTP library hands the client: response bodies, SSE streams and transport failures.

Works with httpx2 and with the legacy httpx module (``lib``); the :class:`~ratepilot.client.exchange.Exchange`
uses these to turn a response into a decision without knowing which library produced it.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import Callable
from typing import Any

from ..retry import FailureKind
from .plan import SSEUsageScanner

__all__ = ["decoded", "failure_kind", "is_json", "is_sse", "key_free_request", "rebuilt", "settling_stream"]

_SECRET_HEADERS = frozenset({"authorization", "api-key", "openai-api-key"})


def failure_kind(lib: Any, exc: BaseException) -> FailureKind | None:
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


def decoded(lib: Any, headers: Any, raw: bytes) -> bytes | None:
    """The body as the SDK will see it (content-encoding undone), for parsing usage and errors."""
    encoding = (headers.get("content-encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    try:
        return bytes(lib.Response(200, headers={"content-encoding": encoding}, content=raw).content)
    except Exception:
        return None


def is_json(headers: Any) -> bool:
    return "json" in (headers.get("content-type") or "").lower()


def is_sse(headers: Any) -> bool:
    return "text/event-stream" in (headers.get("content-type") or "").lower()


def rebuilt(lib: Any, response: Any, request: Any, raw: bytes) -> Any:
    """A response like ``response`` whose (already read) body is ``raw``."""
    return lib.Response(
        response.status_code,
        headers=response.headers,
        stream=lib.ByteStream(raw),
        extensions=response.extensions,
        request=request,
    )


def key_free_request(lib: Any, request: Any) -> Any:
    """A copy of ``request`` whose key-bearing headers are redacted (``Bearer sk-...abcd``; URL and body kept).

    What ratepilot's typed errors carry: an exception may reach a log or an error reporter, and must never take
    the key there. (The SDK's own exceptions for 400/401/403/404 hold the request the SDK sent, as without
    ratepilot: the HTTP client sets ``response.request`` itself.)
    """
    from ..protocol.errors import redact_key

    def redacted(value: str) -> str:
        scheme, _, key = value.partition(" ")
        return f"{scheme} {redact_key(key)}" if key else redact_key(value)

    headers = [
        (name, redacted(value) if name.lower() in _SECRET_HEADERS else value)
        for name, value in request.headers.multi_items()
    ]
    try:
        content = request.content
    except Exception:  # an unread streaming body (the transport reads every body first: not expected)
        content = b""
    return lib.Request(request.method, request.url, headers=headers, content=content, extensions=request.extensions)


Settle = Callable[..., None]
"""Called once when a streamed body ends: ``settle(usage, complete=...)`` (an exchange's ``finish_stream``)."""


def settling_stream(lib: Any, inner: Any, settle: Settle) -> Any:
    """Wrap a streamed (SSE) body so that ``settle`` gets its usage chunk when the stream ends.

    A stream closed before its end, or dropped without being closed, settles too (keeping the estimate):
    otherwise its limiter reservation and budget reservation would be held forever.
    """
    sync_cls, async_cls = _stream_classes(lib)
    cls = async_cls if isinstance(inner, lib.AsyncByteStream) else sync_cls
    return cls(inner, settle)


class _Settling:
    """The part of both stream wrappers that is not I/O."""

    def __init__(self, inner: Any, settle: Settle) -> None:
        self._inner, self._settle = inner, settle
        self._scanner = SSEUsageScanner()
        self._complete = False  # the server's stream reached its end
        self._done = False

    def _feed(self, chunk: bytes) -> None:
        self._scanner.feed(chunk)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._scanner.close()
        self._settle(self._scanner.usage, complete=self._complete or self._scanner.done)

    def __del__(self) -> None:
        # Dropped without close() (the SDK stream was abandoned): still give the reservations their due.
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):  # never raise from a finalizer
                self._finish()


@functools.cache
def _stream_classes(lib: Any) -> tuple[type[Any], type[Any]]:
    """Built per library because each client only accepts its own ``SyncByteStream``/``AsyncByteStream``."""

    class SettlingStream(_Settling, lib.SyncByteStream):  # type: ignore[misc]
        def __iter__(self) -> Any:
            for chunk in self._inner:
                self._feed(chunk)
                yield chunk
            self._complete = True
            self._finish()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._finish()

    class AsyncSettlingStream(_Settling, lib.AsyncByteStream):  # type: ignore[misc]
        async def __aiter__(self) -> Any:
            async for chunk in self._inner:
                self._feed(chunk)
                yield chunk
            self._complete = True
            self._finish()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._finish()

    return SettlingStream, AsyncSettlingStream
