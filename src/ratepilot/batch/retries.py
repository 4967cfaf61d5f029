"""The retry rounds: lines that failed retryably are re-packed into new shards, and stragglers out of attempts are
answered online (``--fallback online``) or reported."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import orjson

from ..requests import RequestLine
from ..results import error_result, fsync_dir
from .base import (
    RunnerBase,
)
from .machine import (
    line_outcome,
)
from .online import answer_online
from .plan import ShardWriter, exact_token_estimate
from .prepare import _record
from .state import JobRecord, LineState, ShardRecord

__all__ = ["Retries"]


class Retries(RunnerBase):
    """The retries part of :class:`~ratepilot.batch.runner.BatchRunner` (see the module docstring)."""

    def _settle_retries(self, job: JobRecord, shards: list[ShardRecord]) -> bool:
        """Every shard is collected: answer out-of-attempts lines online (with a fallback) or finalize them."""
        counts = self.store.line_counts(job)
        if counts[LineState.RETRY] == 0:
            return False
        if self.fallback is not None:
            self._run_fallback(job, shards)
        else:
            self.store.finalize_retries(job, self.config.max_attempts)
        return self.store.line_counts(job)[LineState.RETRY] > 0

    def _plan_retry(self, job: JobRecord, shards: list[ShardRecord]) -> None:
        by_no = {s.shard: s for s in shards}
        writer = ShardWriter(
            self._job_dir(job),
            self._shard_config(job),
            first_shard=self.store.next_shard_number(job),
            token_cap=self._token_limit,
            estimate=exact_token_estimate if self.config.token_estimate == "exact" else None,
        )
        moves: list[tuple[int, str]] = []
        try:
            for old in self.store.shards_with_state(job, LineState.RETRY):
                wanted = self.store.custom_ids_in_state(job, old, LineState.RETRY)
                with open(by_no[old].path, "rb") as fh:
                    for raw in fh:
                        line = orjson.loads(raw)
                        if line["custom_id"] in wanted:
                            spec = writer.add(line["custom_id"], line["url"], line["body"], raw)
                            moves.append((spec.shard, line["custom_id"]))
            specs = writer.close()
        except BaseException:
            writer.abort()
            raise
        next_round = max((s.round for s in shards), default=0) + 1
        with self.store.bulk():
            self.store.move_lines(job, moves, from_state=LineState.RETRY)
            for spec in specs:
                self.store.add_shard(_record(job, spec, round_=next_round))
            self.store.log(job, "retry-planned", f"{len(moves)} lines in {len(specs)} shards")

    def _run_fallback(self, job: JobRecord, shards: list[ShardRecord]) -> None:
        """Answer out-of-attempts stragglers through the online runner's concurrent engine
        (:func:`~ratepilot.batch.online.answer_online`); results are indexed like batch results.

        A request that got no answer is recorded as failed (``online_fallback_failed``) — but quota and budget
        errors stop the job: every following request would meet them too (and a budget must not be crossed).
        The lines answered before the stop are kept; the rest stay waiting for a retry, so a rerun goes on.
        """
        assert self.fallback is not None
        by_no = {s.shard: s for s in shards}
        for old in self.store.shards_with_state(job, LineState.RETRY):
            wanted = self.store.out_of_attempts(job, old, self.config.max_attempts)
            if not wanted:
                continue
            target = self._job_dir(job) / f"online-{old:05d}-{secrets.token_hex(3)}.jsonl"
            file_no = self.store.add_file(job, str(target), "online")

            def stragglers(path: str = by_no[old].path, wanted: set[str] = wanted) -> Iterable[RequestLine]:
                with open(path, "rb") as src:
                    for line_no, raw in enumerate(src, 1):
                        line = orjson.loads(raw)
                        if line["custom_id"] in wanted:
                            yield RequestLine(line_no, line["custom_id"], "POST", line["url"], line["body"])

            stopped = True
            try:
                answer_online(self.fallback, stragglers(), target)
                stopped = False
            finally:  # also when stopped by quota/budget: what was answered is kept
                self._index_online(job, old, file_no, target, wanted, stopped=stopped)

    def _index_online(
        self, job: JobRecord, shard: int, file_no: int, target: Path, wanted: set[str], *, stopped: bool
    ) -> None:
        """Index the fallback's result lines of one shard. Unless the engine was stopped (quota, budget), a
        straggler it could not answer gets an ``online_fallback_failed`` line, so every request ends answered."""
        rows: list[tuple[int, int, int, int, str | None, str]] = []
        seen: set[str] = set()
        with open(target, "ab+") as fh:
            fh.seek(0)
            offset = 0
            for raw in fh:
                result = orjson.loads(raw)
                cid = result["custom_id"]
                seen.add(cid)
                state, code = line_outcome(result)
                final = LineState.DONE if state == LineState.DONE else LineState.FAILED
                rows.append((int(final), file_no, offset, len(raw), code, cid))
                offset += len(raw)
            if not stopped:
                for cid in sorted(wanted - seen):
                    data = orjson.dumps(error_result(cid, "online_fallback_failed", "no answer after retries")) + b"\n"
                    fh.write(data)
                    rows.append((int(LineState.FAILED), file_no, offset, len(data), "online_fallback_failed", cid))
                    offset += len(data)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(target.parent)
        if rows:
            with self.store.bulk():
                self.store.set_results(job, shard, rows, from_state=LineState.RETRY)
                self.store.log(job, "online-fallback", f"{len(rows)} lines", shard=shard)
