"""Sending one request and reporting what came back: the only place the runner touches HTTP.

:class:`HttpSender` (what ``ratepilot run`` uses) posts the request body with an ``httpx2.AsyncClient`` whose
transport is the Pilot's :class:`~ratepilot.client.AsyncPilotTransport` — the very transport
``pilot.wrap(AsyncOpenAI())`` installs, so every request is throttled, retried, classified and accounted
exactly as through the SDK, without the SDK's per-request work (options models, header copies), which would
be most of the runner's CPU per request.

:class:`SdkSender` sends a request through an ``AsyncOpenAI`` client wrapped by a
:class:`~ratepilot.Pilot` (so the Pilot's transport throttles, retries and accounts it), asking the SDK for
the raw HTTP response so the body is kept exactly as the server sent it (no pydantic round trip — cheaper,
and lossless for the result file). Errors the Pilot raises (quota, budget, too large, retries exhausted)
reach the runner as themselves, unwrapped from whatever the SDK put around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
import orjson

from ..errors import AuthFailed, RatePilotError, TransientFailure, unwrap_pilot_error
from ..requests import RequestLine

__all__ = [
    "Answer",
    "AuthFailed",
    "HttpSender",
    "SdkSender",
    "Sender",
    "TransientFailure",
    "api_path",
    "sdk_apost",
    "sdk_post",
    "unwrap_pilot_error",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer from the server (any status): what goes into the result line."""

    status_code: int
    request_id: str
    body: Any  # parsed JSON (or the text, when the server did not answer JSON)
    headers: Any  # a case-insensitive mapping (the limits in x-ratelimit-* are read from it)


DEFAULT_TIMEOUT_S = 600.0
FLEX_TIMEOUT_S = 900.0
_FLEX_TIMEOUT = httpx2.Timeout(FLEX_TIMEOUT_S, connect=10.0)  # built once: every flex request uses it


class Sender(Protocol):
    async def send(self, request: RequestLine) -> Answer: ...


def _parse_body(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", "replace")


def api_path(url: str) -> str:
    """The path to post a requests-file ``url`` to: the SDK client's base_url already ends in ``/v1``."""
    return url[3:] if url.startswith("/v1/") else url


def _answer(response: httpx2.Response) -> Answer:
    return Answer(
        response.status_code,
        response.headers.get("x-request-id") or "",
        _parse_body(response.content),
        response.headers,
    )


def _sdk_failure(exc: Exception) -> Answer:
    """What a failed raw SDK post means: an HTTP answer (any error status) or the error to raise.

    Errors the Pilot raised inside the SDK's call (quota, budget, too large, retries exhausted) are raised as
    themselves, unwrapped; a connection failure is a :class:`TransientFailure`; anything else is re-raised.
    """
    import openai

    # The Pilot's errors first: they are SDK exceptions too (a QuotaExhausted is an openai.RateLimitError, with
    # the 429 attached), and must stop the job, not be recorded as an answer.
    inner = unwrap_pilot_error(exc)
    if inner is not None:
        raise inner from None
    if isinstance(exc, openai.APIStatusError):
        return _answer(exc.response)
    if isinstance(exc, openai.APIConnectionError):
        raise TransientFailure(f"no answer from the server ({type(exc).__name__})") from None
    raise exc


def sdk_post(client: Any, url: str, body: Any) -> Answer:
    """Post ``body`` to ``url`` through a (Pilot-wrapped) ``OpenAI`` client, keeping the raw response.

    Every HTTP answer (4xx/5xx included) is an :class:`Answer`; see :func:`_sdk_failure` for the rest.
    """
    try:
        return _answer(client.post(api_path(url), cast_to=httpx2.Response, body=body))
    except Exception as exc:
        return _sdk_failure(exc)


async def sdk_apost(client: Any, url: str, body: Any) -> Answer:
    """:func:`sdk_post` for an ``AsyncOpenAI`` client."""
    try:
        return _answer(await client.post(api_path(url), cast_to=httpx2.Response, body=body))
    except Exception as exc:
        return _sdk_failure(exc)


class SdkSender:
    """Sends through a (Pilot-wrapped) ``AsyncOpenAI`` client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def send(self, request: RequestLine) -> Answer:
        answer = await sdk_apost(self.client, request.url, request.body)
        if answer.status_code in (401, 403):
            body = answer.body
            message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
            raise AuthFailed(f"HTTP {answer.status_code} from the server: {message}")
        return answer


class HttpSender:
    """Posts through the Pilot's transport on a plain ``httpx2.AsyncClient``. Close it with :meth:`aclose`."""

    def __init__(
        self,
        pilot: Any,
        base_url: str,
        api_key: str,
        *,
        max_connections: int = 1000,
        timeout_s: float | None = None,
    ) -> None:
        from ..client import AsyncPilotTransport

        self._timeout_s = timeout_s

        inner = httpx2.AsyncHTTPTransport(
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            # Plain http (a local simulator) needs no TLS context; building one loads the CA bundle (~0.2 s).
            verify=not base_url.startswith("http://"),
        )
        self.client = httpx2.AsyncClient(
            base_url=base_url.rstrip("/"),
            transport=AsyncPilotTransport(pilot, inner),
            timeout=httpx2.Timeout(timeout_s or DEFAULT_TIMEOUT_S, connect=10.0),
            headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        )

    def timeout_for(self, request: RequestLine) -> Any:
        """The request's timeout: the one given, else 600 s — 900 s for a flex request (OpenAI: flex answers may
        take many minutes, raise the client timeout to 15 min)."""
        if self._timeout_s is None and request.body.get("service_tier") == "flex":
            return _FLEX_TIMEOUT
        return httpx2.USE_CLIENT_DEFAULT

    async def send(self, request: RequestLine) -> Answer:
        try:
            response = await self.client.post(
                api_path(request.url), content=orjson.dumps(request.body), timeout=self.timeout_for(request)
            )
        except RatePilotError:
            raise
        except httpx2.HTTPError as exc:
            raise TransientFailure(f"no answer from the server ({type(exc).__name__})") from None
        status = response.status_code
        body = _parse_body(response.content)
        if status in (401, 403):
            message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
            raise AuthFailed(f"HTTP {status} from the server: {message}")
        return Answer(status, response.headers.get("x-request-id") or "", body, response.headers)

    async def aclose(self) -> None:
        await self.client.aclose()
