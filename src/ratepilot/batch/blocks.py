"""Batch-API upload lines, made in blocks by the planner's parsing workers: the block parser and the worker protocol.

``ratepilot batch`` plans a job from upload-ready lines. A large file is cut into blocks that worker processes
validate in parallel (:func:`parse_upload_block`, the same checks as :func:`ratepilot.requests.parse_line`), talking
to the planner over their stdin/stdout (:func:`serve_upload_blocks`). A worker imports only this module and
:mod:`ratepilot.requests` (``ratepilot.batch`` loads its runner lazily): it starts in a fraction of a second instead
of importing the whole pipeline and the OpenAI SDK — seconds of CPU per worker.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import sys
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import orjson

from ..requests import (
    _BOM,
    _CHAT_URL,
    InvalidLine,
    _fast_request,
    _json_error,
    _parse_detailed,
    _unsendable,
)


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
    "from ratepilot.batch.blocks import serve_upload_blocks; serve_upload_blocks()\n"
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
    from ..protocol.tokens import estimate_prompt_tokens  # the tokenizer: loaded only when asked for

    return estimate_prompt_tokens
