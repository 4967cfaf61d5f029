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

Over 500 lines, one concept: a requests file's lines and what they become — parsed and validated, or turned into
Batch-API upload lines by the planner's worker processes, which import this light module rather than the batch
pipeline (seconds saved per worker).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from .errors import InputError

__all__ = [
    "SUPPORTED_URLS",
    "InvalidLine",
    "RequestLine",
    "RequestsFileError",
    "UploadBlock",
    "UploadGroup",
    "batch_line_bytes",
    "embedding_inputs",
    "fast_token_estimate",
    "infer_url",
    "parse_line",
    "parse_upload_block",
    "read_requests",
    "read_upload_block",
    "recv_message",
    "send_message",
    "serve_upload_blocks",
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

MAX_ARRAY_ITEMS = 2048
"""The most items an embeddings ``input`` / completions ``prompt`` array may have (the API answers 400
``array_above_max_length`` above it)."""
_ARRAY_CAPPED = frozenset({"/v1/embeddings", "/v1/completions"})

MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest request line sent (the simulator's request-body limit; OpenAI documents none, and no text request
comes near it). A larger one is refused locally rather than uploaded or sent to meet a 413."""


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
        if type(value) is list and len(value) > MAX_ARRAY_ITEMS and url in _ARRAY_CAPPED:
            raise _Invalid(
                f"{prefix}{key}",
                f"{len(value):,} items; {url} takes at most {MAX_ARRAY_ITEMS:,} per request (split it); not sent",
            )
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


_CHAT_URL = "/v1/chat/completions"


def _fast_request(obj: Any) -> tuple[str | None, dict[str, Any]] | None:
    """``(custom_id, body)`` when ``obj`` is a valid line of a common shape, else ``None`` (use :func:`_parse`).

    Common shapes: a Batch-API chat-completions line (its ``custom_id`` is returned) and a bare chat body
    without ``metadata`` (``custom_id`` ``None``: the caller assigns ``line-N``). The checks are those of
    :func:`_parse` and :func:`_check_body`, in one straight line of subscripts and exact type checks with no
    error wording and no calls (this runs once per line, and calls are what costs). ``None`` only means "take
    the detailed path", which then names the field — so this must never accept a line that path rejects.
    """
    if obj.__class__ is not dict:
        return None
    try:
        if "body" in obj:
            body = obj["body"]
            if len(obj) != 4 or body.__class__ is not dict or obj["url"] != _CHAT_URL or obj["method"] != "POST":
                return None
            custom_id = obj["custom_id"]
            if custom_id.__class__ is not str or not custom_id:
                return None
        elif "messages" in obj and "metadata" not in obj:
            body = obj
            custom_id = None
        else:
            return None
        model = body["model"]
        messages = body["messages"]
        if model.__class__ is not str or not model or messages.__class__ is not list or not messages:
            return None
        for message in messages:
            if message.__class__ is not dict or message["role"].__class__ is not str:
                return None
    except KeyError:
        return None
    if len(body) > 2:  # the optional checked keys; `in` first: most bodies have one or two of them
        if "stream" in body and body["stream"] is True:
            return None
        if "max_tokens" in body and (v := body["max_tokens"]) is not None and (v.__class__ is not int or v < 0):
            return None
        if (
            "max_completion_tokens" in body
            and (v := body["max_completion_tokens"]) is not None
            and (v.__class__ is not int or v < 0)
        ):
            return None
        if (
            "max_output_tokens" in body
            and (v := body["max_output_tokens"]) is not None
            and (v.__class__ is not int or v < 0)
        ):
            return None
        if "n" in body and (v := body["n"]) is not None and (v.__class__ is not int or v < 0):
            return None
    return custom_id, body


def _parse(obj: Any, line_no: int) -> RequestLine:
    """The detailed path: every shape, every check, errors that name the field. Raises :class:`_Invalid`."""
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


def _parse_detailed(obj: Any, line_no: int) -> RequestLine | InvalidLine:
    try:
        return _parse(obj, line_no)
    except _Invalid as exc:
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        return InvalidLine(line_no, exc.field, exc.message, cid if isinstance(cid, str) else None)


_BOM = b"\xef\xbb\xbf"


def _without_bom(raw: bytes | str) -> bytes | str:
    """A UTF-8 byte order mark at the start of the file (Windows editors write one) is not part of the JSON."""
    if isinstance(raw, bytes):
        return raw[len(_BOM) :] if raw.startswith(_BOM) else raw
    return raw[1:] if raw.startswith("\ufeff") else raw


def _json_error(raw: bytes | str, exc: Exception) -> str:
    """What is wrong with a line the JSON parser refused, in words a person can act on."""
    if isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            byte = raw[bad.start]
            return (
                f"not UTF-8: byte 0x{byte:02x} at column {bad.start + 1} (save the file as UTF-8; "
                "Latin-1 or Windows-1252 text is the usual cause)"
            )
        if raw.startswith(_BOM):
            return "starts with a UTF-8 byte order mark (BOM), which only the file's first line may have"
    return f"invalid JSON ({exc})"


MAX_DEPTH = 200  # JSON nesting a request may have (orjson cannot write more than 254 levels: it could not be sent)


def _unsendable(raw: bytes | str, obj: Any) -> str | None:
    """Why a line that parses can still never be sent (nor cached): larger than MAX_BODY_BYTES, or nested deeper
    than MAX_DEPTH. The bracket count is a cheap filter: only a line with that many brackets is walked."""
    if len(raw) > MAX_BODY_BYTES:
        return f"{len(raw):,} bytes: larger than the {MAX_BODY_BYTES:,}-byte request limit; not sent"
    data = raw if isinstance(raw, bytes) else raw.encode()
    if data.count(b"[") + data.count(b"{") < MAX_DEPTH:
        return None
    depth, level = 0, [(obj, 1)]
    while level:
        value, d = level.pop()
        depth = max(depth, d)
        if depth > MAX_DEPTH:
            return f"JSON nested more than {MAX_DEPTH} levels deep: no API request is; not sent"
        if isinstance(value, dict):
            level.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            level.extend((v, d + 1) for v in value)
    return None


def parse_line(raw: bytes | str, line_no: int) -> RequestLine | InvalidLine | None:
    """Parse and validate one line. ``None`` for a blank line. Pure: no duplicate check (that needs state)."""
    if not raw:
        return None
    if line_no == 1:
        raw = _without_bom(raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # Blank lines are rare: test for them only once the parser has refused the line.
        return None if raw.isspace() else InvalidLine(line_no, None, _json_error(raw, exc))
    refused = _unsendable(raw, obj)
    if refused is not None:
        return InvalidLine(line_no, None, refused)
    common = _fast_request(obj)
    if common is None:
        return _parse_detailed(obj, line_no)
    custom_id, body = common
    return RequestLine(line_no, f"line-{line_no}" if custom_id is None else custom_id, "POST", _CHAT_URL, body)


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


# --- Batch-API upload lines ---------------------------------------------------------------------------------
# `ratepilot batch` plans a job from upload-ready lines. They are made here, in a module with light imports, so
# that the processes that validate a large file in parallel start in a fraction of a second instead of each
# importing the whole batch pipeline (and the OpenAI SDK) — seconds of CPU per worker.


def batch_line_bytes(custom_id: str, url: str, body: Mapping[str, Any]) -> bytes:
    """The Batch-API input line (with its newline) as uploaded."""
    return orjson.dumps(
        {"custom_id": custom_id, "method": "POST", "url": url, "body": body}, option=orjson.OPT_APPEND_NEWLINE
    )


def embedding_inputs(url: str, body: Mapping[str, Any]) -> int:
    """How many inputs an embeddings request carries (the Batch API caps them per file); 0 for other endpoints."""
    if url != "/v1/embeddings":
        return 0
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def fast_token_estimate(data: bytes) -> int:
    """A cheap upper bound for Latin-script prompts: a quarter of the whole line's bytes (keys included).

    The real tokenizer costs ~60 µs per chat request, which would cap planning far below disk speed; the
    byte count over-estimates English prompt tokens (~4 characters per token, plus JSON framing) so shards
    are admitted conservatively. An under-estimate (e.g. CJK text) is caught by the server's
    ``token_limit_exceeded`` and learned from. ``BatchConfig.token_estimate="exact"`` uses the tokenizer.
    """
    return len(data) // 4 + 1


@dataclass(slots=True)
class UploadGroup:
    """The valid lines of one block that go to one ``(model, url)``, as columns in file order.

    Columns rather than one object per line: a block of a million-line file crosses a process boundary and
    is planned with whole-column operations (prefix sums, slices of ``data``), so the planner does no Python
    work per line. ``data`` is the upload lines (newline-terminated) back to back; ``sizes[i]`` is the length
    of line ``i`` in it.
    """

    model: str
    url: str
    line_nos: array[int]
    custom_ids: list[str]
    data: bytes
    sizes: array[int]
    tokens: array[int]
    """Estimated enqueued tokens per line (:func:`fast_token_estimate` or the tokenizer)."""
    inputs: array[int] | None
    """Embedding inputs per line; ``None`` for every other endpoint (all zero)."""


@dataclass(slots=True)
class UploadBlock:
    """A block of a requests file, validated: its valid lines grouped by ``(model, url)`` and its errors."""

    groups: list[UploadGroup]
    errors: list[InvalidLine]
    """The first invalid lines of the block, in line order (at most the ``max_errors`` asked for)."""
    n_errors: int
    """Invalid lines in the block, all of them."""
    n_lines: int
    """Physical lines in the block, blank ones included (the next block's first line number follows)."""


class _GroupBuilder:
    __slots__ = ("cids", "datas", "inputs", "line_nos", "model", "tokens", "url")

    def __init__(self, model: str, url: str) -> None:
        self.model = model
        self.url = url
        self.line_nos: list[int] = []
        self.cids: list[str] = []
        self.datas: list[bytes] = []
        self.tokens: list[int] = []  # only with the exact estimator
        self.inputs: list[int] | None = [] if url == "/v1/embeddings" else None

    def build(self) -> UploadGroup:
        sizes = array("q", map(len, self.datas))
        tokens = array("q", self.tokens) if self.tokens else array("q", [n // 4 + 1 for n in sizes])
        return UploadGroup(
            self.model,
            self.url,
            array("q", self.line_nos),
            self.cids,
            b"".join(self.datas),
            sizes,
            tokens,
            None if self.inputs is None else array("q", self.inputs),
        )


def parse_upload_block(
    block: bytes, first_line: int = 1, *, exact_tokens: bool = False, max_errors: int = 20
) -> UploadBlock:
    """Validate the lines of ``block`` (whole lines; the first is line ``first_line`` of the file, as bare
    bodies take their ``line-N`` ids from it) as Batch-API input lines. Blank lines are skipped.

    A valid Batch-API line is uploaded as read (only its newline normalized); a bare body is serialized once.
    ``exact_tokens``: estimate tokens with the real tokenizer instead of :func:`fast_token_estimate`.
    """
    # The hot loop of planning a batch job: one orjson parse, the straight-line checks of _fast_request, and
    # the raw bytes reused when they already are the upload line; anything else goes the detailed way.
    estimate = _exact_estimator() if exact_tokens else None
    loads = orjson.loads
    chat: dict[str, _GroupBuilder] = {}  # the common case, keyed by model alone
    other: dict[tuple[str, str], _GroupBuilder] = {}
    order: list[_GroupBuilder] = []
    errors: list[InvalidLine] = []
    n_errors = 0
    line_no = first_line - 1
    for raw in io.BytesIO(block):
        line_no += 1
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]  # a file's byte order mark: not part of the JSON, nor of the upload line
        try:
            obj = loads(raw)
        except orjson.JSONDecodeError as exc:
            if not raw.isspace():
                n_errors += 1
                if len(errors) < max_errors:
                    errors.append(InvalidLine(line_no, None, _json_error(raw, exc)))
            continue
        refused = _unsendable(raw, obj)
        if refused is not None:
            n_errors += 1
            if len(errors) < max_errors:
                errors.append(InvalidLine(line_no, None, refused))
            continue
        common = _fast_request(obj)
        if common is not None:
            custom_id, body = common
            if custom_id is None:
                custom_id = f"line-{line_no}"
                data = batch_line_bytes(custom_id, _CHAT_URL, body)
            elif raw[-1] == 10 and raw[-2] != 13:  # ends in "\n", not "\r\n": already the upload line
                data = raw
            else:
                data = raw.rstrip(b"\r\n") + b"\n"
            model: str = body["model"]
            group = chat.get(model)
            if group is None:
                group = chat[model] = _GroupBuilder(model, _CHAT_URL)
                order.append(group)
            url = _CHAT_URL
        else:
            line = _parse_detailed(obj, line_no)
            if isinstance(line, InvalidLine):
                n_errors += 1
                if len(errors) < max_errors:
                    errors.append(line)
                continue
            custom_id, url, body, model = line.custom_id, line.url, line.body, line.model
            # A bare body (metadata already taken off) is serialized; a Batch-API line is uploaded as read.
            data = batch_line_bytes(custom_id, url, body) if body is obj else raw.rstrip(b"\r\n") + b"\n"
            key = (model, url)
            group = chat.get(model) if url == _CHAT_URL else other.get(key)
            if group is None:
                group = _GroupBuilder(model, url)
                if url == _CHAT_URL:
                    chat[model] = group
                else:
                    other[key] = group
                order.append(group)
            if group.inputs is not None:
                group.inputs.append(embedding_inputs(url, body))
        group.line_nos.append(line_no)
        group.cids.append(custom_id)
        group.datas.append(data)
        if estimate is not None:
            group.tokens.append(estimate(url, body))
    return UploadBlock([g.build() for g in order], errors, n_errors, line_no - first_line + 1)


def read_upload_block(
    path: str, start: int, end: int, first_line: int, exact_tokens: bool = False, max_errors: int = 20
) -> UploadBlock:
    """:func:`parse_upload_block` of bytes ``[start, end)`` of ``path`` (a parsing worker's job)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        block = fh.read(end - start)
    return parse_upload_block(block, first_line, exact_tokens=exact_tokens, max_errors=max_errors)


# A parsing worker is a fresh interpreter running :func:`serve_upload_blocks` on its stdin and stdout, started
# by the planner with ``python -c WORKER_CODE`` rather than by multiprocessing: "spawn" re-imports the caller's
# ``__main__`` in every worker (a script without a main guard would run again, once per worker; the CLI would
# import typer for nothing), and "fork" is unsafe in a process with threads. The messages are pickles, each
# after its length (8 bytes, big-endian): the framing of multiprocessing.connection, on plain pipes.
WORKER_CODE = (
    # first of all: Ctrl-C reaches the whole process group, and the planner stops its workers itself
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from ratepilot.requests import serve_upload_blocks; serve_upload_blocks()\n"
)
_HEADER = struct.Struct("!Q")


def send_message(out: IO[bytes], obj: object) -> None:
    """Write ``obj`` as one message (pickled before anything is written: a failure leaves the stream clean)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)))
    out.write(data)
    out.flush()


def recv_message(inp: IO[bytes]) -> Any:
    """Read one message; ``EOFError`` when the other end is gone (closed, exited, killed)."""
    header = inp.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = inp.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # only ever from the planner or its own worker process


def serve_upload_blocks(inp: IO[bytes] | None = None, out: IO[bytes] | None = None) -> None:
    """The loop of a parsing worker process: ``(path, start, end, first_line, exact_tokens, max_errors)`` tasks
    in, :class:`UploadBlock` s (or the exception raised) out, until ``None`` (or the planner is gone).

    By default on the process's stdin and stdout; stdout is then moved off fd 1 (which becomes stderr), so a
    stray ``print`` cannot corrupt the stream.
    """
    if inp is None:
        inp = sys.stdin.buffer
    if out is None:
        out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
    try:
        while (task := recv_message(inp)) is not None:
            try:
                result: UploadBlock | BaseException = read_upload_block(*task)
            except Exception as exc:  # the planner re-raises it
                result = exc
            try:
                send_message(out, result)
            except Exception:  # an exception that does not pickle: its description does
                send_message(out, RuntimeError(f"parsing worker failed: {result!r}"))
    except (EOFError, OSError):
        pass  # the planner stopped (an error, or killed): nothing left to do
    finally:
        with contextlib.suppress(OSError):
            out.close()


def _exact_estimator() -> Callable[[str, Mapping[str, Any]], int]:
    from .protocol.tokens import estimate_prompt_tokens  # the tokenizer: loaded only when asked for

    return estimate_prompt_tokens
