"""Validate and plan a job in one streaming pass; nothing is uploaded unless every line is valid.

Each line goes through :func:`ratepilot.requests.iter_upload_lines` (the shared validator of
:func:`~ratepilot.requests.parse_line`: JSON, custom_id, POST, supported url, body basics; it also makes the
upload line) plus the job-level rules only a batch has: unique ``custom_id``\\ s, one endpoint
per job, and a non-empty file. Valid lines are written straight into shard files and the results index, so
memory stays bounded (the only per-line state in memory is the set of custom_ids, ~100 MB per million). On
any error the shard files and index rows are discarded and :class:`BatchInputError` lists the first errors
with their line numbers and fields.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..requests import InvalidLine, UploadLine, iter_upload_lines, read_upload_lines
from ..store import JobRecord, ShardRecord, Store
from .config import BatchConfig
from .crash import crash_point
from .plan import ShardSpec, ShardWriter

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


# A parsed line, as the planner needs it: (line_no, custom_id, url, model, upload bytes, embedding inputs,
# tokens) for a valid request, or an InvalidLine. Small and picklable, so parsing can run in other processes.
Parsed = UploadLine


def parse_chunk(path: str, start: int, end: int, first_line: int, exact: bool) -> list[Parsed | InvalidLine]:
    """Validate the lines in bytes ``[start, end)``, the first of which is line ``first_line`` of the file."""
    return read_upload_lines(path, start, end, first_line, exact)


def iter_lines(path: str, start: int, end: int, first_line: int, exact: bool) -> Iterator[Parsed | InvalidLine]:
    """Stream the parsed lines of bytes ``[start, end)`` (the first is line ``first_line``); blank lines skipped."""
    return iter_upload_lines(path, start, end, first_line, exact_tokens=exact)


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


def _parsed_lines(
    path: Path, exact: bool, workers: int, force_parallel: bool = False
) -> Iterator[Parsed | InvalidLine]:
    """Every parsed line in file order: inline for small files, else chunks parsed by worker processes.

    Workers only validate and serialize (the costly, independent part); the planner keeps the order-dependent
    rules (duplicates, one endpoint) and all writes, so the result does not depend on the worker count.
    """
    size = path.stat().st_size
    if workers <= 1 or (size < PARALLEL_MIN_BYTES and not force_parallel):
        # streaming: memory does not grow with the file (and no generator in between: this runs per line)
        return iter_upload_lines(str(path), 0, None, 1, exact_tokens=exact)
    return itertools.chain.from_iterable(_parsed_chunks(path, size, exact, workers))


def _parsed_chunks(path: Path, size: int, exact: bool, workers: int) -> Iterator[list[Parsed | InvalidLine]]:
    ranges = _chunks(path, size, CHUNK_BYTES)
    # Workers run ratepilot.requests.read_upload_lines (not a function of this package): a spawned worker
    # imports only the module of the function it runs, and this package would pull in the OpenAI SDK.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future[list[Parsed | InvalidLine]]] = deque(
            pool.submit(read_upload_lines, str(path), *r, exact) for r in itertools.islice(ranges, workers * 2)
        )  # a bounded number of chunks in flight: memory stays bounded
        while pending:
            items = pending.popleft().result()
            nxt = next(ranges, None)
            if nxt is not None:
                pending.append(pool.submit(read_upload_lines, str(path), *nxt, exact))
            yield items


def default_workers() -> int:
    """Parsing processes for a large file: one per CPU (the planner itself mostly waits on them)."""
    return max(1, (os.cpu_count() or 1))


def plan_job(
    store: Store,
    job: JobRecord,
    path: Path,
    directory: Path,
    config: BatchConfig,
    *,
    token_cap: Callable[[str], int | None],
) -> PlanSummary:
    """Validate ``path`` and write its shards and index rows for ``job``; raise :class:`BatchInputError`."""
    writer = ShardWriter(directory, config, token_cap=token_cap)
    errors: list[InvalidLine] = []
    invalid = 0
    first_url: tuple[str, int] | None = None
    total = 0
    rows: list[tuple[int, str, int]] = []
    add = writer.add_prepared
    exact = config.token_estimate == "exact"
    try:
        with store.bulk():
            n_workers = default_workers() if config.parse_workers is None else config.parse_workers
            for item in _parsed_lines(path, exact, n_workers, force_parallel=config.parse_workers is not None):
                if not isinstance(item, InvalidLine):
                    line_no, cid, url, model, data, inputs, tokens = item
                    if first_url is None:
                        first_url = (url, line_no)
                    if url == first_url[0]:
                        if not invalid:
                            # Rows are keyed by physical line number: input order, and what errors name.
                            rows.append((line_no, cid, add(model, url, data, inputs, tokens)))
                            if len(rows) >= 16384:
                                store.add_lines(job, rows)
                                rows.clear()
                        total += 1
                        continue
                    item = _mixed_url(line_no, cid, url, first_url)
                invalid += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(item)
            if invalid or total == 0:
                raise BatchInputError(
                    str(path),
                    errors,
                    invalid,
                    reason=None if invalid else "empty file: no requests to submit (nothing uploaded)",
                )
            store.add_lines(job, rows)
            crash_point("during-plan")  # shard files written, nothing committed
            # Duplicate custom_ids are found by the unique index (no million-entry set in memory).
            duplicates, n_duplicates = store.index_lines(job, report=MAX_REPORTED_ERRORS)
            if n_duplicates:
                raise BatchInputError(
                    str(path),
                    [
                        InvalidLine(line, "custom_id", f"duplicate custom_id {cid!r} (first on line {first})", cid)
                        for cid, first, line in duplicates
                    ],
                    n_duplicates,
                )
            specs = writer.close()
            for spec in specs:
                store.add_shard(_record(job, spec, round_=0))
            assert first_url is not None
            store.update_job(job, state="active", total=total, url=first_url[0])
    except BaseException:
        writer.abort()
        raise
    return PlanSummary(total, first_url[0], tuple(specs), path.stat().st_size)


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
