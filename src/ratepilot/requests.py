"""Reading a requests JSONL: streaming, validated, with errors that name the line and the field.

Two line shapes are accepted, and may be mixed in one file:

* **Batch-API lines** — ``{"custom_id": str, "method": "POST", "url": "/v1/...", "body": {...}}``. A line is
  read as this shape whenever it has a ``"body"`` key; then ``custom_id``, ``method`` and ``url`` are required.
* **Bare request bodies** — ``{"model": ..., "messages": [...]}``, one per line. An optional top-level
  ``"metadata"`` object is taken off the body (it is ours, not the API's; the OpenAI Cookbook's convention) and
  kept on :attr:`RequestLine.metadata`. The ``custom_id`` is ``metadata["custom_id"]`` when that is a string,
  otherwise ``"line-<N>"`` from the 1-based physical line number. The url is inferred from the body:

  ============================================================  ==========================
  body has                                                       url
  ============================================================  ==========================
  ``messages``                                                   ``/v1/chat/completions``
  ``input`` and a model whose name contains ``embedding``        ``/v1/embeddings``
  ``input`` and a model whose name contains ``moderation``,
  or ``input`` and no model                                      ``/v1/moderations``
  ``input`` (any other model)                                    ``/v1/responses``
  ``prompt``                                                     ``/v1/completions``
  ============================================================  ==========================

Blank lines are skipped (they still count for line numbers). Validation is deliberately shallow — the shape
a request needs to be sent and accounted (a model, a messages list, no ``stream``), not the API's full schema,
which the server checks anyway. Duplicate ``custom_id``\\ s are detected with a set of the ids seen (about
100 MB per million ids).

Parsing one line is a pure function (:func:`parse_line`); :func:`read_requests` is the streaming driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from .errors import InputError

__all__ = [
    "SUPPORTED_URLS",
    "InvalidLine",
    "RequestLine",
    "RequestsFileError",
    "infer_url",
    "parse_line",
    "read_requests",
]

SUPPORTED_URLS = frozenset(
    {"/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions", "/v1/moderations"}
)
"""The endpoints the Batch API accepts, and so the ones a requests file may name."""

_BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})


@dataclass(slots=True)
class RequestLine:
    """One valid request from the file. ``body`` is what is sent (``metadata`` already removed)."""

    line_no: int
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]
    metadata: dict[str, Any] | None = None

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) else ""

    def to_batch_line(self) -> dict[str, Any]:
        """The Batch-API input line for this request."""
        return {"custom_id": self.custom_id, "method": self.method, "url": self.url, "body": self.body}


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """Why one line was rejected: its 1-based line number, the offending field (a dotted path) and why."""

    line_no: int
    field: str | None
    message: str
    custom_id: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line_no}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class RequestsFileError(InputError, ValueError):
    """A requests file with invalid lines. ``errors`` holds the first few (``str`` lists them all)."""

    def __init__(self, path: str, errors: list[InvalidLine], total_invalid: int | None = None) -> None:
        self.path = path
        self.errors = list(errors)
        self.total_invalid = max(total_invalid or 0, len(self.errors))
        first = self.errors[0] if self.errors else None
        head = f"{path}: {self.total_invalid} invalid line{'s' if self.total_invalid != 1 else ''}"
        lines = [head, *(f"  {e}" for e in self.errors)]
        if self.total_invalid > len(self.errors):
            lines.append(f"  ... and {self.total_invalid - len(self.errors)} more")
        super().__init__("\n".join(lines))
        # InputError's fields point at the first bad line (its message already names every line).
        self.line = first.line_no if first else None
        self.field = first.field if first else None


class _Invalid(Exception):
    """Internal: raised by the pure validators, turned into an :class:`InvalidLine` by the caller."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def infer_url(body: Mapping[str, Any]) -> str:
    """The endpoint a bare request body is meant for (rule in the module docstring). Raises ``ValueError``."""
    if "messages" in body:
        return "/v1/chat/completions"
    if "input" in body:
        model = body.get("model")
        name = model.lower() if isinstance(model, str) else ""
        if "embedding" in name:
            return "/v1/embeddings"
        if "moderation" in name or model is None:
            return "/v1/moderations"
        return "/v1/responses"
    if "prompt" in body:
        return "/v1/completions"
    raise ValueError("cannot tell the endpoint: a bare body needs 'messages', 'input' or 'prompt'")


_COUNT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n")


def _check_body(url: str, body: dict[str, Any], prefix: str) -> None:
    """Shallow checks a request needs to be sent and accounted. Raises :class:`_Invalid`.

    Written for speed (it runs once per line of files with millions of lines): exact type checks first,
    the error wording only on the slow path.
    """
    model = body.get("model")
    if type(model) is not str or not model:
        if model is not None:
            raise _Invalid(f"{prefix}model", f"must be a non-empty string, not {_type_name(model)}")
        if url != "/v1/moderations":
            raise _Invalid(f"{prefix}model", "missing (every request needs a model)")
    if body.get("stream") is True:
        raise _Invalid(f"{prefix}stream", "streaming is not supported here (results are whole responses)")
    if url == "/v1/chat/completions":
        messages = body.get("messages")
        if type(messages) is not list or not messages:
            if messages is None:
                raise _Invalid(f"{prefix}messages", "missing (a chat completion needs messages)")
            raise _Invalid(f"{prefix}messages", f"must be a non-empty array, not {_type_name(messages)}")
        for message in messages:
            if type(message) is not dict or type(message.get("role")) is not str:
                _bad_message(messages, prefix)
    else:
        key = "prompt" if url == "/v1/completions" else "input"
        value = body.get(key)
        if type(value) is not str and type(value) is not list:
            if value is None:
                raise _Invalid(f"{prefix}{key}", "missing")
            raise _Invalid(f"{prefix}{key}", f"must be a string or an array, not {_type_name(value)}")
    if len(body) > 2:  # the count fields are optional; skip the lookups for minimal bodies
        for key in _COUNT_KEYS:
            value = body.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise _Invalid(f"{prefix}{key}", f"must be a non-negative integer, not {value!r}")


def _bad_message(messages: list[Any], prefix: str) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Invalid(f"{prefix}messages[{i}]", f"must be an object, not {_type_name(message)}")
        if not isinstance(message.get("role"), str):
            raise _Invalid(f"{prefix}messages[{i}].role", "missing or not a string")


def _parse(obj: Any, line_no: int) -> RequestLine:
    if not isinstance(obj, dict):
        raise _Invalid(None, f"expected a JSON object, got {_type_name(obj)}")
    if "body" in obj:  # a Batch-API line
        custom_id = obj.get("custom_id")
        if custom_id is None:
            raise _Invalid("custom_id", "missing (a Batch-API line needs custom_id, method, url, body)")
        if not isinstance(custom_id, str) or not custom_id:
            raise _Invalid("custom_id", f"must be a non-empty string, not {_type_name(custom_id)}")
        method = obj.get("method")
        if method is None:
            raise _Invalid("method", 'missing (use "POST")')
        if method != "POST":
            raise _Invalid("method", f'must be "POST", not {method!r}')
        url = obj.get("url")
        if url is None:
            raise _Invalid("url", 'missing (e.g. "/v1/chat/completions")')
        if not isinstance(url, str) or url not in SUPPORTED_URLS:
            raise _Invalid("url", f"unsupported {url!r}; one of: {', '.join(sorted(SUPPORTED_URLS))}")
        body = obj["body"]
        if not isinstance(body, dict):
            raise _Invalid("body", f"must be an object, not {_type_name(body)}")
        if len(obj) != 4:
            extra = obj.keys() - _BATCH_KEYS
            raise _Invalid(sorted(extra)[0], "unknown key in a Batch-API line (expected custom_id, method, url, body)")
        _check_body(url, body, "body.")
        return RequestLine(line_no, custom_id, "POST", url, body)
    metadata = obj.pop("metadata", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise _Invalid("metadata", f"must be an object, not {_type_name(metadata)}")
    try:
        url = infer_url(obj)
    except ValueError as exc:
        raise _Invalid(None, str(exc)) from None
    _check_body(url, obj, "")
    custom_id = metadata.get("custom_id") if metadata else None
    if custom_id is None:
        custom_id = f"line-{line_no}"
    elif not isinstance(custom_id, str) or not custom_id:
        raise _Invalid("metadata.custom_id", f"must be a non-empty string, not {_type_name(custom_id)}")
    return RequestLine(line_no, custom_id, "POST", url, obj, metadata)


def parse_line(raw: bytes | str, line_no: int) -> RequestLine | InvalidLine | None:
    """Parse and validate one line. ``None`` for a blank line. Pure: no duplicate check (that needs state)."""
    if raw.isspace() or not raw:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return InvalidLine(line_no, None, f"invalid JSON ({exc})")
    try:
        return _parse(obj, line_no)
    except _Invalid as exc:
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        return InvalidLine(line_no, exc.field, exc.message, cid if isinstance(cid, str) else None)


def read_requests(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    invalid: list[InvalidLine] | None = None,
    check_duplicates: bool = True,
) -> Iterator[RequestLine]:
    """Stream the valid requests of a JSONL file, in file order.

    With ``invalid=None`` the first invalid line raises :class:`RequestsFileError` (naming the line and
    field). With a list, invalid lines are appended to it and skipped, and reading continues — use that to
    collect every error in a validation pass, or to implement ``--skip-invalid``. A duplicate ``custom_id``
    is invalid at its second occurrence.
    """
    if isinstance(source, str | os.PathLike):
        with open(source, "rb", buffering=1 << 20) as fh:
            yield from _read(fh, str(source), invalid, check_duplicates)
    else:
        yield from _read(source, str(getattr(source, "name", "<stream>")), invalid, check_duplicates)


def _read(fh: IO[bytes], name: str, invalid: list[InvalidLine] | None, check_duplicates: bool) -> Iterator[RequestLine]:
    seen: set[str] = set()
    for line_no, raw in enumerate(fh, 1):
        result = parse_line(raw, line_no)
        if result is None:
            continue
        if isinstance(result, RequestLine):
            if not check_duplicates:
                yield result
                continue
            cid = result.custom_id
            if cid not in seen:
                seen.add(cid)
                yield result
                continue
            result = InvalidLine(line_no, "custom_id", f"duplicate custom_id {cid!r}", cid)
        if invalid is None:
            raise RequestsFileError(name, [result])
        invalid.append(result)
