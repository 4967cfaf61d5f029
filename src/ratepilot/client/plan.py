"""Sans-IO: what one HTTP request will cost, and what its response says it did cost.

The transport calls :func:`plan_request` before sending (model, scope, the server's admission charge,
worst-case output) and :func:`usage_from_body` / :class:`SSEUsageScanner` after, so the limiter can be
settled and the ledger filled. Nothing here touches sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..protocol.tokens import admission_cost, max_output_tokens, reservation_tokens
from ..protocol.usage import Usage, usage_from_mapping
from ..protocol.usage import usage_from_body as usage_from_body_dict

__all__ = [
    "GENERATION_ENDPOINTS",
    "PRIORITY_HEADER",
    "REQUESTS_SCOPE",
    "RETRY_HEADER",
    "RequestPlan",
    "SSEUsageScanner",
    "Usage",
    "parse_json",
    "plan_request",
    "prompt_estimate",
    "usage_from_body",
]

PRIORITY_HEADER = "x-ratepilot-priority"
"""Per-request priority (``low``/``normal``/``high``); stripped by the transport before sending."""

RETRY_HEADER = "x-ratepilot-retry"
"""``x-ratepilot-retry: never``: send this request at most once whatever the fault (a 500, a timeout, a dropped
connection): for calls that create something, where the caller finds out what happened rather than risk
creating it twice. Rate-limit refusals are still waited out (a 429 means the server did nothing). Stripped."""

REQUESTS_SCOPE = "requests"
"""The limiter scope (the "model" half of ``Scope(key_id, model)``) for calls that name no model: polls,
file uploads and downloads, batch and thread management. They cost one request and no tokens. Rate limits are
per model on the server, and these calls have none, so they share one per-key scope that learns its own limit
from the headers on their responses (the server reports the bucket it charged them to)."""

GENERATION_ENDPOINTS = ("chat/completions", "completions", "responses", "embeddings", "moderations")
"""POST endpoints whose body's ``model`` is charged tokens at admission."""


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What the transport knows about a request before sending it."""

    method: str
    path: str
    model: str | None  # the model named in the body of a generation call, else None
    tokens: int  # the server's TPM admission charge (0 for calls that are not generation calls)
    max_output: int  # n × max_tokens, 0 when the body sets none
    stream: bool
    body: Mapping[str, Any] | None

    @property
    def scope_model(self) -> str:
        return self.model if self.model else REQUESTS_SCOPE

    @property
    def generation(self) -> bool:
        return self.model is not None

    @property
    def background(self) -> bool:
        """A Responses API call with ``background: true``: answered at once, billed when it completes."""
        return self.body is not None and self.body.get("background") is True


def _is_generation(path: str) -> bool:
    p = path.rstrip("/")
    return any(p.endswith("/" + e) for e in GENERATION_ENDPOINTS)


def parse_json(body: bytes) -> Any:
    """A JSON body parsed (with orjson: this is on every request's path), or None when it is not JSON.

    The client parses each request body and each response body at most once, here.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # also raised for invalid UTF-8
        return None


def plan_request(
    method: str, path: str, content_type: str | None, body: bytes, estimate: str = "server"
) -> RequestPlan:
    """Describe a request. Never raises: a body that is not JSON is simply a 0-token, model-less call.
    ``estimate``: how its tokens are reserved (:func:`ratepilot.protocol.tokens.reservation_tokens`)."""
    method = method.upper()
    parsed: Mapping[str, Any] | None = None
    if method != "GET" and body and (content_type is None or "json" in content_type.lower()):
        value = parse_json(body)
        if isinstance(value, Mapping):
            parsed = value
    model = parsed.get("model") if parsed is not None else None
    if method != "POST" or not isinstance(model, str) or not model or not _is_generation(path):
        return RequestPlan(method, path, None, 0, 0, False, parsed)
    assert parsed is not None
    return RequestPlan(
        method=method,
        path=path,
        model=model,
        tokens=reservation_tokens(path, parsed, estimate),
        max_output=max_output_tokens(parsed),
        stream=parsed.get("stream") is True,
        body=parsed,
    )


_OUTPUT_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def prompt_estimate(plan: RequestPlan) -> int:
    """The prompt's tokens as the admission rule estimates them (``ceil(chars / 4)``, images, token ids;
    embeddings: exact), without running the tokenizer again: the admission cost is that estimate unless the
    output cap dominates it, and only then are the characters counted once more."""
    if plan.body is None or plan.tokens > plan.max_output or plan.path.rstrip("/").endswith("/embeddings"):
        return plan.tokens
    return admission_cost(plan.path, {k: v for k, v in plan.body.items() if k not in _OUTPUT_CAPS})


def usage_from_body(body: bytes) -> Usage | None:
    """The ``usage`` of a JSON response body, or None when it has none (or is not JSON)."""
    return usage_from_body_dict(parse_json(body))


def usage_from_event(obj: Any) -> Usage | None:
    """Usage carried by one streamed event: a chat chunk's ``usage`` or a Responses ``response.completed``."""
    if not isinstance(obj, Mapping):
        return None
    found = usage_from_mapping(obj.get("usage"))
    if found is None and isinstance(obj.get("response"), Mapping):
        found = usage_from_mapping(obj["response"].get("usage"))
    return found


class SSEUsageScanner:
    """Feed raw ``text/event-stream`` bytes; remembers the last usage seen in any ``data:`` line.

    Only the unfinished last line is buffered, so memory stays small however long the stream is.
    """

    def __init__(self) -> None:
        self._partial = b""
        self.usage: Usage | None = None
        self.done = False  # saw the server's end-of-stream marker (``data: [DONE]``)

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            return
        if b'"usage"' not in line:
            self.done = self.done or line[5:].strip() == b"[DONE]"
            return
        found = usage_from_event(parse_json(line[5:].strip()))
        if found is not None:
            self.usage = found
