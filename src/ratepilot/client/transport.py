"""The httpx2 (and legacy httpx) transports through which every SDK call goes: the thin sync/async drivers.

Each driver is a short loop — acquire from the limiter, send with the original transport, read what must be
read, hand the outcome to the :class:`~ratepilot.client.exchange.Exchange`, then deliver, wait or raise. All
decisions live in the exchange and the retry policy, so sync and async cannot drift apart. A driver needs only
the Pilot's planner (``begin``: a request in, an exchange out) and the exchange's core (limiter, clock).

Bodies: error responses and the JSON bodies of generation calls are read here (they are small, and their
``usage`` settles the limiter); streamed (SSE) responses are wrapped so they settle from their usage chunk
when consumed or closed; everything else (file downloads, lists) passes through untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx2

from .exchange import ATTEMPTS_HEADER, WAITED_HEADER, Deliver, Exchange, Fail, Reraise, RetryAfter, Step

if TYPE_CHECKING:
    from .pilot import Pilot

Begin = Callable[[str, str, Any, bytes, Any], Exchange]
"""Plans one request into an :class:`Exchange` (the Pilot's): all a driver needs besides the exchange itself."""

__all__ = [
    "ATTEMPTS_HEADER",
    "WAITED_HEADER",
    "AsyncPilotTransport",
    "PilotTransport",
    "async_transport_class",
    "sync_transport_class",
]


# -- the drivers: I/O only; every decision is the Exchange's ------------------------------------------------------


def handle_sync(begin: Begin, inner: Any, lib: Any, request: Any) -> Any:
    ex = begin(request.method, request.url.path, request.headers, request.read(), lib)
    core = ex.core
    ex.on_request(request)
    response = None
    try:
        while True:
            with ex.admission():
                grant = core.limiter.acquire(ex.scope, ex.cost, priority=ex.priority)
            ex.sending(grant)
            try:
                response = inner.handle_request(request)
                raw = _read(response) if ex.wants_body(request, response) else None
            except Exception as exc:
                step: Step = ex.on_exception(exc)
                if isinstance(step, Reraise):
                    raise
            else:
                step, response = ex.on_response(request, response, raw)
                if isinstance(step, Deliver):
                    return ex.annotated(response)
                response.close()
            response = None
            if isinstance(step, Fail):
                raise step.error from step.cause
            assert isinstance(step, RetryAfter)
            core.clock.sleep(step.after)
            ex.waited(step.after, retry=True)
    except BaseException:
        try:
            if response is not None:
                response.close()
        finally:
            ex.abort()
        raise


async def handle_async(begin: Begin, inner: Any, lib: Any, request: Any) -> Any:
    ex = begin(request.method, request.url.path, request.headers, await request.aread(), lib)
    core = ex.core
    ex.on_request(request)
    response = None
    try:
        while True:
            with ex.admission():
                grant = await core.limiter.aacquire(ex.scope, ex.cost, priority=ex.priority)
            ex.sending(grant)
            try:
                response = await inner.handle_async_request(request)
                raw = await _aread(response) if ex.wants_body(request, response) else None
            except Exception as exc:
                step: Step = ex.on_exception(exc)
                if isinstance(step, Reraise):
                    raise
            else:
                step, response = ex.on_response(request, response, raw)
                if isinstance(step, Deliver):
                    return ex.annotated(response)
                await response.aclose()
            response = None
            if isinstance(step, Fail):
                raise step.error from step.cause
            assert isinstance(step, RetryAfter)
            await core.clock.asleep(step.after)
            ex.waited(step.after, retry=True)
    except BaseException:
        try:
            if response is not None:
                await response.aclose()
        finally:
            ex.abort()
        raise


def _read(response: Any) -> bytes:
    try:
        return b"".join(response.stream)
    finally:
        response.stream.close()


async def _aread(response: Any) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.stream])
    finally:
        await response.stream.aclose()


# -- the transport classes ------------------------------------------------------------------------------------


class PilotTransport(httpx2.BaseTransport):
    """Wraps the SDK's httpx2 transport: every request is throttled, retried, classified and accounted."""

    def __init__(self, pilot: Pilot, inner: httpx2.BaseTransport) -> None:
        self.pilot = pilot
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = handle_sync(self.pilot._begin, self.inner, httpx2, request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncPilotTransport(httpx2.AsyncBaseTransport):
    def __init__(self, pilot: Pilot, inner: httpx2.AsyncBaseTransport) -> None:
        self.pilot = pilot
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = await handle_async(self.pilot._begin, self.inner, httpx2, request)
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
            return handle_sync(self.pilot._begin, self.inner, lib, request)

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
            return await handle_async(self.pilot._begin, self.inner, lib, request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return LegacyAsyncPilotTransport
