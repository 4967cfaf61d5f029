"""Validate and plan a job in one streaming pass; nothing is uploaded unless every line is valid.

The file is read in blocks of a few MB; each block goes through :func:`ratepilot.batch.blocks.parse_upload_block`
(the shared validator of :func:`~ratepilot.requests.parse_line`: JSON, custom_id, POST, supported url, body
basics; it also makes the upload lines), inline or in worker processes, and comes back as columns per
(model, url). The planner adds the job-level rules only a batch has: one endpoint per job, a non-empty file,
and unique ``custom_id``\\ s (found by a unique index on the results index once every row is written, not by
an in-memory set). Valid lines are written straight into shard files and the results index, so memory stays
bounded. On any error the shard files and index rows are discarded and :class:`BatchInputError` lists the
file's first errors (duplicates included) in line order, with their fields, and counts them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import operator
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, RatePilotError
from ..requests import InvalidLine
from .blocks import WORKER_CODE, UploadBlock, UploadGroup, parse_upload_block, recv_message, send_message
from .config import BatchConfig
from .crash import crash_point
from .plan import Segment, ShardSpec, ShardWriter
from .state import BatchState, JobRecord, ShardRecord

__all__ = ["MAX_REPORTED_ERRORS", "BatchInputError", "ParseWorkerError", "PlanSummary", "fingerprint", "plan_job"]

MAX_REPORTED_ERRORS = 20


@dataclass
class BatchInputError(InputError, ValueError):
    """The requests file cannot be submitted; ``errors`` are the first invalid lines (all named by line)."""

    path: str
    errors: list[InvalidLine] = field(default_factory=list)
    total_invalid: int = 0
    reason: str | None = None  # a file-level problem (empty file, unreadable)

    def __post_init__(self) -> None:
        self.total_invalid = max(self.total_invalid, len(self.errors))
        InputError.__init__(self, str(self))

    def __str__(self) -> str:
        if self.reason:
            return f"{self.path}: {self.reason}"
        head = (
            f"{self.path}: {self.total_invalid} invalid line{'s' if self.total_invalid != 1 else ''}, nothing uploaded"
        )
        lines = [head, *(f"  {e}" for e in self.errors)]
        if self.total_invalid > len(self.errors):
            lines.append(f"  ... and {self.total_invalid - len(self.errors)} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class PlanSummary:
    total: int
    url: str
    shards: tuple[ShardSpec, ...]
    bytes_read: int


def fingerprint(path: Path) -> str:
    """Identifies the input of a job cheaply: size, mtime and a hash of the first and last MiB."""
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read(1 << 20))
    return f"{st.st_size}:{st.st_mtime_ns}:{digest.hexdigest()[:16]}"


PARALLEL_MIN_BYTES = 256 << 20
"""Below this, starting worker processes costs more than it saves: parse inline."""
CHUNK_BYTES = 4 << 20


def _chunks(path: Path, size: int, chunk: int) -> Iterator[tuple[int, int, int]]:
    """Byte ranges of about ``chunk`` bytes, each ending just after a newline, with their first line number
    (counting newlines is a memchr at GB/s; bare bodies need their global line number for ``line-N`` ids)."""
    with open(path, "rb") as fh:
        start, first_line = 0, 1
        while start < size:
            data = fh.read(chunk)
            tail = fh.readline() if start + len(data) < size else b""
            end = start + len(data) + len(tail)
            yield start, end, first_line
            first_line += data.count(b"\n") + tail.count(b"\n")
            start = end


def _blocks(path: Path, exact: bool, workers: int, force_parallel: bool = False) -> Iterator[UploadBlock]:
    """Every block of the file, validated, in file order: inline for small files, else by worker processes.

    Workers only validate and serialize (the costly, independent part), each returning its block as columns;
    the planner keeps the order-dependent rules (duplicates, one endpoint) and all writes, so the result does
    not depend on the worker count.
    """
    size = path.stat().st_size
    if workers <= 1 or (size < PARALLEL_MIN_BYTES and not force_parallel):
        return _inline_blocks(path, exact)
    return _parallel_blocks(path, size, exact, workers)


def _inline_blocks(path: Path, exact: bool) -> Iterator[UploadBlock]:
    # streaming a block at a time: memory does not grow with the file
    with open(path, "rb") as fh:
        first_line = 1
        while data := fh.read(CHUNK_BYTES):
            if not data.endswith(b"\n"):
                data += fh.readline()
            block = parse_upload_block(data, first_line, exact_tokens=exact, max_errors=MAX_REPORTED_ERRORS)
            first_line += block.n_lines  # counted while parsing: no second pass over the bytes
            yield block


def _parallel_blocks(path: Path, size: int, exact: bool, workers: int) -> Iterator[UploadBlock]:
    """Blocks parsed by ``workers`` processes, handed out round-robin and read back in the same order.

    A plain pipe each way per worker, read by this thread, rather than a ProcessPoolExecutor: the executor
    unpickles results on a thread of its own, which contends for the GIL with the planner (whose SQLite
    inserts release and retake it on every row) and made those inserts twice as slow.
    """
    ranges = _chunks(path, size, CHUNK_BYTES)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            procs.append(_start_worker())
        pending: deque[subprocess.Popen[bytes]] = deque()  # the worker of each block in flight, in file order
        for i, r in enumerate(itertools.islice(ranges, workers * 2)):  # bounded in flight: bounded memory
            _send(procs[i % workers], (str(path), *r, exact, MAX_REPORTED_ERRORS))
            pending.append(procs[i % workers])
        while pending:
            proc = pending.popleft()
            assert proc.stdout is not None
            try:
                block = recv_message(proc.stdout)
            except (EOFError, OSError):
                raise _worker_died(proc) from None
            if isinstance(block, BaseException):
                raise block
            nxt = next(ranges, None)
            if nxt is not None:
                _send(proc, (str(path), *nxt, exact, MAX_REPORTED_ERRORS))
                pending.append(proc)
            yield block
    finally:
        _stop_workers(procs)


def _start_worker() -> subprocess.Popen[bytes]:
    """A parsing worker: a fresh interpreter that imports only :mod:`ratepilot.requests` (not the caller's
    ``__main__``, which multiprocessing's "spawn" would run again in every worker; see ``WORKER_CODE``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_CODE, _PACKAGE_ROOT],  # the same ratepilot as this process's
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    _widen_pipe(proc.stdout.fileno())
    return proc


def _widen_pipe(fd: int) -> None:
    """Give a results pipe 1 MB (Linux; the default is 64 KB): a block is megabytes, and a small pipe makes the
    worker and the planner take turns 64 KB at a time (multiprocessing's socketpairs buffer more, too)."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):  # another OS, or over the system's pipe-max-size
        pass


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _send(proc: subprocess.Popen[bytes], task: tuple[object, ...]) -> None:
    assert proc.stdin is not None
    try:
        send_message(proc.stdin, task)
    except OSError:  # BrokenPipeError: the worker is gone
        raise _worker_died(proc) from None


def _worker_died(proc: subprocess.Popen[bytes]) -> ParseWorkerError:
    try:
        code: int | None = proc.wait(5.0)  # its pipe is closed: it has exited, or is about to
    except subprocess.TimeoutExpired:
        code = None
    if code is None:
        how = "its pipe closed"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"killed by {name}: by hand, or by the out-of-memory killer?"
    else:
        how = f"exit code {code}"
    return ParseWorkerError(
        f"a parsing worker process exited unexpectedly ({how}); nothing was uploaded, rerun to plan the job again"
    )


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every worker and reap it (no process is left behind, whatever happened)."""
    for proc in procs:
        # Our end of its results pipe first: a worker blocked writing a block nobody will read gets EPIPE.
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                send_message(proc.stdin, None)  # done: the worker returns
            with contextlib.suppress(OSError):
                proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


MAX_DEFAULT_WORKERS = 2
"""Parsing processes by default, at most. A job's planning must stay within 300 MB: measured on 1M requests
(``bench/batch_scale.py``), the planner peaks at ~157 MB with two workers' blocks in flight and each worker at
~60 MB, 278 MB in all; every further worker adds ~85 MB. Throughput does not need more: one worker already
gives ~140 MB/s, two ~150-170 MB/s (the planner's single thread, SQLite inserts and shard writes, is next).
``BatchConfig(parse_workers=N)`` sets the count explicitly."""


def default_workers() -> int:
    """Parsing processes for a large file: one per CPU this process may run on, at most
    :data:`MAX_DEFAULT_WORKERS` (``os.cpu_count()`` counts CPUs of the machine, not of a container's or a
    ``taskset``'s share, and is unbounded on large hosts)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform (macOS, Windows)
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


class ParseWorkerError(RatePilotError, RuntimeError):
    """A process parsing the requests file died (killed, out of memory): nothing was uploaded; rerun."""


class _Errors:
    """The first :data:`MAX_REPORTED_ERRORS` invalid lines of the file, in line order, and how many in all."""

    def __init__(self) -> None:
        self.first: list[InvalidLine] = []
        self.total = 0

    def add_block(self, errors: Iterable[InvalidLine], count: int) -> None:
        """Blocks come in file order, each with its own first errors (any order): only a block's first few
        can be among the file's first."""
        self.total += count
        room = MAX_REPORTED_ERRORS - len(self.first)
        if room > 0:
            self.first.extend(heapq.nsmallest(room, errors, key=lambda e: e.line_no))


def plan_job(
    store: BatchState,
    job: JobRecord,
    path: Path,
    directory: Path,
    config: BatchConfig,
    *,
    token_cap: Callable[[str], int | None],
) -> PlanSummary:
    """Validate ``path`` and write its shards and index rows for ``job``; raise :class:`BatchInputError`.

    Every line is checked even after an error, so the report names the file's first errors, duplicates
    included, in line order (a duplicate's index row is written like any valid line's; shard files stop
    being written at the first error, as they will be discarded).
    """
    writer = ShardWriter(directory, config, token_cap=token_cap)
    errors = _Errors()
    first_url: tuple[str, int] | None = None
    total = 0
    exact = config.token_estimate == "exact"
    try:
        with store.bulk():
            n_workers = default_workers() if config.parse_workers is None else config.parse_workers
            for block in _blocks(path, exact, n_workers, force_parallel=config.parse_workers is not None):
                groups = block.groups
                if first_url is None and groups:
                    first = min(groups, key=lambda g: g.line_nos[0])
                    first_url = (first.url, first.line_nos[0])
                good = [g for g in groups if first_url is not None and g.url == first_url[0]]
                mixed = (_mixed_urls(g, first_url) for g in groups if first_url is not None and g.url != first_url[0])
                n_mixed = sum(len(g.line_nos) for g in groups) - sum(len(g.line_nos) for g in good)
                errors.add_block(itertools.chain(block.errors, *mixed), block.n_errors + n_mixed)
                total += sum(len(g.line_nos) for g in good)
                # Rows are keyed by physical line number: input order, and what errors name.
                if errors.total:  # the plan is void; index rows still find duplicates for the report
                    store.add_lines(job, _rows(good, [[(0, len(g.line_nos), -1)] for g in good]))
                else:
                    store.add_lines(job, _rows(good, writer.add_groups(good)))
            if not errors.total and total == 0:
                raise BatchInputError(str(path), reason="empty file: no requests to submit (nothing uploaded)")
            crash_point("during-plan")  # shard files written, nothing committed
            # Duplicate custom_ids are found by the unique index (no million-entry set in memory).
            duplicates, n_duplicates = store.index_lines(job, report=MAX_REPORTED_ERRORS)
            if errors.total or n_duplicates:
                dup_errors = (
                    InvalidLine(line, "custom_id", f"duplicate custom_id {cid!r} (first on line {first})", cid)
                    for cid, first, line in duplicates
                )
                first_errors = list(heapq.merge(errors.first, dup_errors, key=lambda e: e.line_no))
                raise BatchInputError(str(path), first_errors[:MAX_REPORTED_ERRORS], errors.total + n_duplicates)
            specs = writer.close()
            for spec in specs:
                store.add_shard(_record(job, spec, round_=0))
            assert first_url is not None
            store.update_job(job, state="active", total=total, url=first_url[0])
    except BaseException:
        writer.abort()
        raise
    return PlanSummary(total, first_url[0], tuple(specs), path.stat().st_size)


def _rows(groups: list[UploadGroup], segments: list[list[Segment]]) -> list[tuple[int, str, int]]:
    """The index rows ``(line number, custom_id, shard)`` of a block's groups, in line order.

    Built by C iterators (zip, repeat, chain) with no Python code per row; the groups' rows are then merged
    into line order (sorted runs: a linear merge), as appending to the table in rowid order is far cheaper
    for SQLite than inserting between existing rows.
    """
    rows = list(
        itertools.chain.from_iterable(
            zip(g.line_nos[start:end], g.custom_ids[start:end], itertools.repeat(shard, end - start), strict=True)
            for g, segs in zip(groups, segments, strict=True)
            for start, end, shard in segs
        )
    )
    if len(groups) > 1:
        rows.sort(key=_LINE_NO)
    return rows


_LINE_NO = operator.itemgetter(0)


def _mixed_urls(group: UploadGroup, first_url: tuple[str, int]) -> Iterator[InvalidLine]:
    for line_no, cid in zip(group.line_nos, group.custom_ids, strict=True):
        yield _mixed_url(line_no, cid, group.url, first_url)


def _mixed_url(line_no: int, cid: str, url: str, first_url: tuple[str, int]) -> InvalidLine:
    return InvalidLine(
        line_no,
        "url",
        f"{url!r} differs from {first_url[0]!r} (line {first_url[1]}); one job has one endpoint, "
        "split the file by endpoint",
        cid,
    )


def _record(job: JobRecord, spec: ShardSpec, *, round_: int) -> ShardRecord:
    return ShardRecord(
        job=job.id,
        shard=spec.shard,
        model=spec.model,
        url=spec.url,
        round=round_,
        path=str(spec.path),
        n_requests=spec.n_requests,
        n_bytes=spec.n_bytes,
        est_tokens=spec.est_tokens,
    )
