"""Validate and plan a job in one streaming pass; nothing is uploaded unless every line is valid.

The file is read in blocks of a few MB; each block goes through :func:`ratepilot.requests.parse_upload_block`
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
import multiprocessing
import operator
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from ..errors import InputError
from ..requests import InvalidLine, UploadBlock, UploadGroup, parse_upload_block, serve_upload_blocks
from ..store import JobRecord, ShardRecord, Store
from .config import BatchConfig
from .crash import crash_point
from .plan import Segment, ShardSpec, ShardWriter

__all__ = ["MAX_REPORTED_ERRORS", "BatchInputError", "PlanSummary", "fingerprint", "plan_job"]

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

    A plain pipe per worker, read by this thread, rather than a ProcessPoolExecutor: the executor unpickles
    results on a thread of its own, which contends for the GIL with the planner (whose SQLite inserts
    release and retake it on every row) and made those inserts twice as slow.
    """
    ranges = _chunks(path, size, CHUNK_BYTES)
    # Workers run ratepilot.requests.serve_upload_blocks (not a function of this package): a spawned worker
    # imports only the module of the function it runs, and this package would pull in the OpenAI SDK.
    ctx = multiprocessing.get_context("spawn")
    conns: list[Connection] = []
    procs: list[BaseProcess] = []
    try:
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=serve_upload_blocks, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            conns.append(mine)
            procs.append(proc)
        pending: deque[Connection] = deque()  # the worker of each block in flight, in file order
        for i, r in enumerate(itertools.islice(ranges, workers * 2)):  # bounded in flight: bounded memory
            conns[i % workers].send((str(path), *r, exact, MAX_REPORTED_ERRORS))
            pending.append(conns[i % workers])
        while pending:
            conn = pending.popleft()
            try:
                block = conn.recv()
            except EOFError:
                raise RuntimeError("a parsing worker process exited unexpectedly (killed, out of memory?)") from None
            if isinstance(block, BaseException):
                raise block
            nxt = next(ranges, None)
            if nxt is not None:
                conn.send((str(path), *nxt, exact, MAX_REPORTED_ERRORS))
                pending.append(conn)
            yield block
    finally:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.send(None)  # done: the worker returns
            conn.close()
        for worker in procs:
            worker.join(5.0)
            if worker.exitcode is None:
                worker.kill()
                worker.join()


def default_workers() -> int:
    """Parsing processes for a large file: one per CPU (the planner itself mostly waits on them)."""
    return max(1, (os.cpu_count() or 1))


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
    store: Store,
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
