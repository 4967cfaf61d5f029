"""Collect: index downloaded output/error files by custom_id, then write results in input order.

The server returns a batch's results in its own order, split over an output file (2xx) and an error file.
Each line is indexed in the job's ``lines`` table (outcome, file number, byte offset, length) — one shard's
file at a time, at most 50,000 rows — and the results file is then written by walking the index in input
order and copying each line byte for byte with ``os.pread``. Memory stays bounded whatever the job's size:
no result line is held longer than it takes to copy it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..results import error_result, fsync_dir
from .crash import crash_point
from .machine import line_outcome
from .state import BatchState, JobRecord, LineState

__all__ = ["CollectSummary", "index_result_file", "write_ordered_results"]


@dataclass(frozen=True)
class CollectSummary:
    """What a collect wrote: result lines, of which successes and final failures; requests not answered yet."""

    path: str
    written: int
    done: int
    failed: int
    missing: int

    @property
    def complete(self) -> bool:
        return self.missing == 0


def index_result_file(store: BatchState, job: JobRecord, shard: int, file_no: int, path: Path) -> int:
    """Index every line of a downloaded output/error file (custom_id -> outcome, byte offset, length).

    A file holds one shard's lines (at most 50,000), so its rows are gathered, sorted by custom_id (the
    index's order: far fewer page misses than the server's shuffled order) and written in one statement.
    """
    rows: list[tuple[int, int, int, int, str | None, str]] = []
    offset = 0
    with open(path, "rb", buffering=1 << 20) as fh:
        for raw in fh:
            size = len(raw)
            if raw.strip():
                line = orjson.loads(raw)
                state, code = line_outcome(line)
                rows.append((int(state), file_no, offset, size, code, str(line.get("custom_id"))))
            offset += size
    rows.sort(key=lambda r: r[5])
    return store.set_results(job, shard, rows)


_NO_LINE_REASONS = {
    "batch_expired": "the batch expired before this request ran, and no retry attempts were left",
    "batch_cancelled": "the batch was cancelled before this request ran, and no retry attempts were left",
    "token_limit_exceeded": "the model's enqueued-token limit was exceeded on every attempt",
}


_NO_LINE = "the batch gave no result for this request"


def write_ordered_results(store: BatchState, job: JobRecord, output: Path) -> CollectSummary:
    """Rewrite ``output`` with every indexed result line, in input order; memory bounded by open buffers.

    Written to ``<output>.part``, fsynced, renamed and the directory fsynced, so the results file is always a
    complete snapshot, and a durable one once this returns (a crash after "done" cannot lose the rename).
    Lines are copied byte for byte from the downloaded files (``os.pread`` at the indexed offset).
    """
    files = store.file_paths(job)
    # A line failed with its batch (rejected as a whole) gets the server's own words about that batch.
    rejected = {s.shard: s.error_message for s in store.shards(job) if s.batch_status == "failed" and s.error_message}
    fds: dict[int, int] = {}
    part = output.with_name(output.name + ".part")
    written = done = failed = missing = 0
    try:
        with open(part, "wb", buffering=1 << 20) as out:
            for _idx, cid, state, file_no, off, length, code, shard in store.iter_lines(job):
                if file_no is None or off is None or length is None:
                    if state == LineState.FAILED:  # failed for good without any result line (batch rejected)
                        reason = _NO_LINE_REASONS.get(code or "") or rejected.get(shard) or _NO_LINE
                        if code in _NO_LINE_REASONS and shard in rejected:
                            reason = f"{reason} (the server said: {rejected[shard]})"
                        out.write(orjson.dumps(error_result(cid, code or "batch_failed", reason)) + b"\n")
                        written += 1
                        failed += 1
                    else:
                        missing += 1
                    continue
                fd = fds.get(file_no)
                if fd is None:
                    fd = fds[file_no] = os.open(files[file_no], os.O_RDONLY)
                data = os.pread(fd, length, off)
                out.write(data if data.endswith(b"\n") else data + b"\n")
                written += 1
                if state == LineState.DONE:
                    done += 1
                elif state == LineState.PENDING:
                    missing += 1  # pragma: no cover - pending lines have no file
                else:
                    failed += 1
            out.flush()
            os.fsync(out.fileno())
        crash_point("during-collect-write")
        os.replace(part, output)
        fsync_dir(output.parent)
    finally:
        for fd in fds.values():
            os.close(fd)
    return CollectSummary(str(output), written, done, failed, missing)
