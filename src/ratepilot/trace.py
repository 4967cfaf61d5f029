"""The trace: what each request of a job did, in a compact sidecar next to its results.

``RESULTS.jsonl.trace`` sits next to the results file (and its marker ``RESULTS.jsonl.ratepilot``). The results
file stays the truth about *what* was answered; the trace says *when* and *how*, for ``ratepilot report`` and
``ratepilot status``: timestamps, attempts, waits, tokens, cost, status or error code and model per request,
and snapshots of the rate limits learned from the server over time. It holds no request or response body, no
error message (a message may quote part of a key) and no key: custom_ids, model names, codes and numbers only.

Format (version 1): JSON lines with short keys, so a request costs about 100 bytes.

* A segment header per run (a rerun appends a new segment)::

    {"k": "run", "v": 1, "mode": "online", "t0": <unix seconds>, "job": <marker job id>,
     "created": <marker created_at>, "pid": 123, "host": "..."}

* One line per request (no ``"k"``: the common case is the short one)::

    {"i": custom_id, "t": end (s after t0), "d": duration since issued (s), "w": s waited for the limiter and
     between retries (omitted: 0), "a": attempts (omitted: 1), "s": HTTP status (0: no answer),
     "e": error code (omitted: none), "m": model, "p": prompt tokens, "o": completion tokens, "c": cost USD,
     "h": 1 (an answer from the response cache)}

* Limit snapshots, at most one a second: ``{"k": "lim", "t", "m": model, "req": [limit, remaining, reset_s],
  "tok": [...], "http": [requests, retries, 429s, errors]}`` (``http``: the Pilot's counters so far, when known).
* An end line: ``{"k": "end", "t", "stop": reason or null}``.

Batch jobs write no trace: their results have no per-request timing, and everything else a report needs (status,
tokens, cost at the Batch price) is in the results file, which ``report`` and ``status`` read anyway.

**Cheap to write.** The online runner appends a small dict per request to a list; its flusher, already in a worker
thread for the results' group commit, serializes the list and writes it with one ``write`` and no ``fsync``: the
trace is diagnostics, so a machine crash may lose its last moments, never a result. A trace that cannot be written
is dropped with one warning; the job goes on.

"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .clock import Clock, SystemClock
from .results import read_marker

__all__ = [
    "TRACE_SUFFIX",
    "LimitSnapshot",
    "RequestRecord",
    "Segment",
    "SegmentEnd",
    "TraceEvent",
    "TraceWriter",
    "read_trace",
    "trace_path",
]

TRACE_SUFFIX = ".trace"
VERSION = 1
SNAPSHOT_EVERY_S = 1.0

log = logging.getLogger(__name__)


def trace_path(results: str | os.PathLike[str]) -> Path:
    path = Path(results)
    return path.with_name(path.name + TRACE_SUFFIX)


# ------------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Segment:
    """One run (or one collect) of the job."""

    mode: str
    t0: float
    job: str = ""
    created: str = ""
    pid: int | None = None
    host: str = ""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one request did. ``at``: unix seconds when it ended (None: unknown, a batch line without ``created``)."""

    custom_id: str
    at: float | None
    duration: float | None
    waited: float
    attempts: int
    status: int
    error: str | None
    model: str
    prompt: int
    completion: int
    cost: float
    cache_hit: bool
    mode: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.error is None


@dataclass(frozen=True, slots=True)
class LimitSnapshot:
    """The limits the server stated (``(limit, remaining, reset_s)`` per dimension) and the client's counters."""

    at: float
    model: str
    requests: tuple[int, int, float] | None
    tokens: tuple[int, int, float] | None
    http: tuple[int, int, int, int] | None  # HTTP requests, retries, 429s, other errors: totals of the run so far


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    at: float
    stop: str | None


TraceEvent = Segment | RequestRecord | LimitSnapshot | SegmentEnd


def _dim(value: Any) -> tuple[int, int, float] | None:
    if isinstance(value, list) and len(value) == 3:
        return int(value[0]), int(value[1]), float(value[2])
    return None


def read_trace(path: str | os.PathLike[str]) -> Iterator[TraceEvent]:
    """Every event of a trace file, times made absolute (unix seconds). A torn last line, a line that is not
    JSON and records of a later format version are skipped: the trace is diagnostics, never a reason to fail."""
    try:
        fh = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below; a missing trace is no error
    except FileNotFoundError:
        return
    segment = Segment("online", 0.0)
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            try:
                event = _event(rec, segment)
            except (TypeError, ValueError):
                continue
            if isinstance(event, Segment):
                segment = event
            if event is not None:
                yield event


def _event(rec: dict[str, Any], segment: Segment) -> TraceEvent | None:
    kind = rec.get("k")
    t0 = segment.t0
    if kind is None:
        t = rec.get("t")
        d = rec.get("d")
        return RequestRecord(
            custom_id=str(rec.get("i", "")),
            at=t0 + float(t) if t is not None else None,
            duration=float(d) if d is not None else None,
            waited=float(rec.get("w", 0.0)),
            attempts=int(rec.get("a", 1)),
            status=int(rec.get("s", 0)),
            error=rec.get("e"),
            model=str(rec.get("m", "")),
            prompt=int(rec.get("p", 0)),
            completion=int(rec.get("o", 0)),
            cost=float(rec.get("c", 0.0)),
            cache_hit=bool(rec.get("h")),
            mode=segment.mode,
        )
    if kind == "run":
        if int(rec.get("v", VERSION)) > VERSION:
            raise ValueError("a later trace format")
        pid = rec.get("pid")
        return Segment(
            str(rec.get("mode", "online")),
            float(rec.get("t0", 0.0)),
            str(rec.get("job", "")),
            str(rec.get("created", "")),
            int(pid) if pid is not None else None,
            str(rec.get("host", "")),
        )
    if kind == "lim":
        http = rec.get("http")
        return LimitSnapshot(
            t0 + float(rec["t"]),
            str(rec.get("m", "")),
            _dim(rec.get("req")),
            _dim(rec.get("tok")),
            (int(http[0]), int(http[1]), int(http[2]), int(http[3])) if isinstance(http, list) else None,
        )
    if kind == "end":
        stop = rec.get("stop")
        return SegmentEnd(t0 + float(rec["t"]), str(stop) if stop is not None else None)
    return None


# ------------------------------------------------------------------------------------------------------ writing


def _header(results: Path, mode: str, t0: float) -> dict[str, Any]:
    marker = read_marker(results)
    return {
        "k": "run",
        "v": VERSION,
        "mode": mode,
        "t0": round(t0, 3),
        "job": marker.job_id if marker else "",
        "created": marker.created_at if marker else "",
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def _same_job(path: Path, header: Mapping[str, Any]) -> bool:
    """Does the trace at ``path`` belong to the results file as it is now (same job, not overwritten since)?"""
    try:
        with open(path, "rb") as fh:
            first = orjson.loads(fh.readline())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(first, dict) and first.get("job") == header["job"] and first.get("created") == header["created"]


class TraceWriter:
    """Appends one run's segment to a results file's trace. Records are buffered; :meth:`flush` writes them.

    Thread-safe like :class:`~ratepilot.results.ResultWriter`: the event loop records while a worker thread flushes.
    """

    def __init__(self, path: Path, fd: int, clock: Clock, t_start: float) -> None:
        self.path = path
        self.clock = clock
        self._fd = fd
        self._t_start = t_start  # clock.now() at the segment's t0
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._last_snapshot = -SNAPSHOT_EVERY_S

    @classmethod
    def open(cls, results: str | os.PathLike[str], *, mode: str = "online", clock: Clock | None = None) -> TraceWriter:
        """Start a segment in ``results``' trace: appended to it when it belongs to the same job, a new trace when
        the results file was started afresh (``--overwrite``) or the trace is another job's."""
        clock = clock or SystemClock()
        results = Path(results)
        path = trace_path(results)
        header = _header(results, mode, clock.wall())
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if path.exists() and not _same_job(path, header):
            flags |= os.O_TRUNC
        fd = os.open(path, flags, 0o644)
        writer = cls(path, fd, clock, clock.now())
        writer._buffer.append(header)
        return writer

    def _t(self, now: float) -> float:
        return round(now - self._t_start, 3)

    def request(
        self,
        custom_id: str,
        *,
        started: float,
        ended: float,
        status: int,
        model: str,
        waited: float = 0.0,
        attempts: int = 1,
        error: str | None = None,
        prompt: int = 0,
        completion: int = 0,
        cost: float = 0.0,
        cache_hit: bool = False,
    ) -> None:
        """One request ended (``started``/``ended``: this writer's clock)."""
        rec: dict[str, Any] = {"i": custom_id, "t": self._t(ended), "d": round(ended - started, 3)}
        if waited > 0.0005:
            rec["w"] = round(waited, 3)
        if attempts != 1:
            rec["a"] = attempts
        rec["s"] = status
        if error is not None:
            rec["e"] = error
        rec["m"] = model
        if prompt or completion:
            rec["p"] = prompt
            rec["o"] = completion
        if cost:
            rec["c"] = float(f"{cost:.4g}")
        if cache_hit:
            rec["h"] = 1
        with self._lock:
            self._buffer.append(rec)

    def snapshot_due(self, now: float) -> bool:
        return now - self._last_snapshot >= SNAPSHOT_EVERY_S

    def limits(
        self,
        now: float,
        model: str,
        requests: tuple[int, int, float] | None,
        tokens: tuple[int, int, float] | None,
        http: tuple[int, int, int, int] | None = None,
    ) -> None:
        """A snapshot of the limits the server stated (and the client's counters) at ``now`` (this writer's clock)."""
        self._last_snapshot = now
        rec: dict[str, Any] = {"k": "lim", "t": self._t(now), "m": model}
        if requests is not None:
            rec["req"] = [requests[0], requests[1], round(requests[2], 3)]
        if tokens is not None:
            rec["tok"] = [tokens[0], tokens[1], round(tokens[2], 3)]
        if http is not None:
            rec["http"] = list(http)
        with self._lock:
            self._buffer.append(rec)

    def flush(self) -> None:
        """Write everything recorded so far (one ``write``). Never raises: a trace that cannot be written is
        dropped, with a warning, and the job goes on."""
        with self._io_lock:
            with self._lock:
                chunk, self._buffer = self._buffer, []
            if not chunk or self._fd < 0:
                return
            data = b"".join(orjson.dumps(rec) + b"\n" for rec in chunk)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                log.warning("ratepilot: the trace %s cannot be written (%s); going on without it", self.path, exc)
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1

    def close(self, stop: str | None = None) -> None:
        """End the segment (``stop``: why the run stopped, if it did) and close the file."""
        if self._fd < 0:
            return
        with self._lock:
            self._buffer.append({"k": "end", "t": self._t(self.clock.now()), "stop": stop})
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
