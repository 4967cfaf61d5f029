"""The one result-line format, a durable appending writer, a reader, and the job marker.

Every runner (online ``run`` and the Batch pipeline) writes Batch-API-shaped lines, so downstream code does
not care how a job ran::

    {"id": "rpreq_...", "custom_id": "...",
     "response": {"status_code": 200, "request_id": "req_...", "body": {...}} | null,
     "error": {"code": "...", "message": "..."} | null}

As in the Batch API, a request the server answered — even with an HTTP error such as 400 — has a
``response`` (the error is in ``response.body``) and ``error: null``; ``error`` is for requests that got no
HTTP answer (a network failure after every retry, a batch that expired before the request ran).

**Which job wrote this file.** The results file holds only result lines. Next to it, a small sidecar
``<RESULTS>.ratepilot`` (JSON: format version, job id, the requests file, when created) records the job. It is
written (atomically, fsynced) *before* the first result, and :func:`open_results` refuses to append to a
non-empty results file whose sidecar is missing or names another job: a rerun of the same job resumes, a
different job is told to pick another output (or to overwrite explicitly).

**Durability.** :meth:`ResultWriter.append` only buffers; :meth:`ResultWriter.sync` writes the buffer with one
``write`` and ``fsync``\\ s it, and returns how many results are now durable. Callers count a result as done
only after the ``sync`` that covered it returned (group commit: one fsync per batch of results, so throughput
does not depend on disk latency). A torn last line (the process was killed mid-``write``) is cut off when
the file is reopened, so a resumed run re-asks exactly the requests whose result is not complete on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import RatePilotError
from .protocol.pricing import PriceTable
from .protocol.usage import usage_from_body

__all__ = [
    "MARKER_SUFFIX",
    "ForeignResultsError",
    "JobMarker",
    "ResultWriter",
    "error_result",
    "finished_ids",
    "fsync_dir",
    "job_id_for_file",
    "marker_path",
    "new_result_id",
    "open_results",
    "read_marker",
    "read_results",
    "response_result",
    "result_error_code",
]

MARKER_SUFFIX = ".ratepilot"
FORMAT_VERSION = 1


def new_result_id() -> str:
    return f"rpreq_{uuid.uuid4().hex}"


def response_result(
    custom_id: str, status_code: int, request_id: str | None, body: Any, *, id: str | None = None
) -> dict[str, Any]:
    """A result line for a request the server answered (any HTTP status)."""
    return {
        "id": id or new_result_id(),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id or "", "body": body},
        "error": None,
    }


def error_result(custom_id: str, code: str, message: str, *, id: str | None = None) -> dict[str, Any]:
    """A result line for a request that got no HTTP answer."""
    return {
        "id": id or new_result_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def result_error_code(line: Mapping[str, Any]) -> str:
    """How a summary names an error result: ``"404 model_not_found"`` (HTTP status and the body's code) for an
    HTTP error, ``"200 not JSON"`` for a 2xx answer whose body is not JSON, the ``error.code``
    (``"batch_expired"``) for a request that got no HTTP answer."""
    response = line.get("response")
    if isinstance(response, Mapping):
        status = response.get("status_code")
        body = response.get("body")
        err = body.get("error") if isinstance(body, Mapping) else None
        code = err.get("code") if isinstance(err, Mapping) else None
        if isinstance(status, int) and 200 <= status < 300:
            code = "not JSON"  # (a 2xx is an error result only when its body could not be read)
        return f"{status} {code}" if isinstance(code, str) and code else str(status)
    error = line.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    return str(code) if code else "unknown"


# --------------------------------------------------------------------------------------------------- marker


@dataclass(frozen=True, slots=True)
class JobMarker:
    """The sidecar that says which job a results file belongs to."""

    job_id: str
    requests: str | None = None
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "ratepilot_results": FORMAT_VERSION,
                "job": self.job_id,
                "requests": self.requests,
                "created_at": self.created_at,
                "extra": self.extra,
            },
            option=orjson.OPT_INDENT_2,
        )


class ForeignResultsError(RatePilotError, ValueError):
    """The results file exists and belongs to another job (or was not written by ratepilot)."""


def marker_path(results: str | os.PathLike[str]) -> Path:
    path = Path(results)
    return path.with_name(path.name + MARKER_SUFFIX)


def read_marker(results: str | os.PathLike[str]) -> JobMarker | None:
    path = marker_path(results)
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise ForeignResultsError(f"{path}: unreadable ratepilot marker ({exc})") from None
    if not isinstance(data, dict) or "job" not in data:
        raise ForeignResultsError(f"{path}: not a ratepilot results marker")
    extra = data.get("extra")
    return JobMarker(str(data["job"]), data.get("requests"), str(data.get("created_at") or ""), extra or {})


def fsync_dir(path: Path) -> None:
    """Make a rename (or a new file) in ``path`` durable: fsync the directory itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(results: Path, marker: JobMarker) -> None:
    target = marker_path(results)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(marker.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def job_id_for_file(path: str | os.PathLike[str]) -> str:
    """A job id from the requests file's content: the same file is the same job, wherever it is."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return f"sha256:{digest}"


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline) left by a kill mid-write."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # Walk back in blocks to the last newline.
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                fh.truncate(pos + idx + 1)
                break
        else:
            fh.truncate(0)
        fh.flush()
        os.fsync(fh.fileno())


def open_results(
    path: str | os.PathLike[str],
    job_id: str,
    *,
    requests: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> ResultWriter:
    """Open ``path`` for appending the results of job ``job_id``; create its marker first.

    Raises :class:`ForeignResultsError` when the file already holds results of another job, or results with
    no marker (not ours). ``overwrite=True`` empties the file and starts the job afresh.
    """
    results = Path(path)
    results.parent.mkdir(parents=True, exist_ok=True)
    existing = read_marker(results)
    nonempty = results.exists() and results.stat().st_size > 0
    if overwrite:
        if results.exists():
            results.write_bytes(b"")
        existing = None
    elif nonempty and existing is None:
        raise ForeignResultsError(
            f"{results} already exists and was not written by ratepilot (no {marker_path(results).name}); "
            "choose another output file, or overwrite it explicitly"
        )
    elif existing is not None and existing.job_id != job_id:
        raise ForeignResultsError(
            f"{results} holds results of another job (requests {existing.requests or '?'}, {existing.job_id[:19]}); "
            "choose another output file, or overwrite it explicitly"
        )
    if existing is None:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        req = str(Path(requests).resolve()) if requests is not None else None
        _write_marker(results, JobMarker(job_id, req, created, extra or {}))
    if results.exists():
        _repair_tail(results)
    return ResultWriter(results)


# --------------------------------------------------------------------------------------------------- writer


class ResultWriter:
    """Appends result lines; :meth:`sync` makes everything appended so far durable (write + fsync).

    Thread-safe: the event loop may ``append`` while a worker thread runs ``sync``.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync
        self._buffer: list[bytes] = []
        self._lock = threading.Lock()  # guards the buffer
        self._io_lock = threading.Lock()  # one write+fsync at a time, in order
        self.durable = 0  # results made durable by this writer

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def append(self, line: dict[str, Any]) -> None:
        data = orjson.dumps(line) + b"\n"
        with self._lock:
            self._buffer.append(data)

    def sync(self) -> int:
        """Write and fsync everything appended so far; return how many results this call made durable."""
        with self._io_lock:
            with self._lock:
                chunk, self._buffer = self._buffer, []
            if not chunk:
                return 0
            data = b"".join(chunk)
            view = memoryview(data)
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError:
                # A full disk (or a read-only one): cut what part of the chunk reached the file and keep the whole
                # chunk for the next sync, so nothing is lost or written twice if space comes back.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                with self._lock:
                    self._buffer[:0] = chunk
                raise
            self.durable += len(chunk)
            return len(chunk)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------- reader


def read_results(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every complete result line of a results file (a torn last line is ignored)."""
    if not os.path.exists(path):
        return
    with open(path, "rb", buffering=1 << 20) as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # torn tail
            if raw.strip():
                yield orjson.loads(raw)


def spent_on(path: str | os.PathLike[str], prices: PriceTable) -> float:
    """What the answers already in a results file cost, priced at the synchronous standard rate: an upper bound
    for those served at half price (Batch API, flex), so a resumed job's budget errs on the safe side."""
    total = 0.0
    for line in read_results(path):
        body = (line.get("response") or {}).get("body")
        usage = usage_from_body(body)
        if usage is not None and isinstance(body, dict):
            total += prices.cost(str(body.get("model") or ""), usage.prompt, usage.completion, usage.cached)
    return total


def finished_ids(path: str | os.PathLike[str]) -> set[str]:
    """The custom_ids that already have a complete result line."""
    return {line["custom_id"] for line in read_results(path)}
