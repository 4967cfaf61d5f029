"""Submitting a job's shards: upload, create, each sent at most once and reconciled after a fault or a crash.

The intent → call → outcome protocol (see :mod:`ratepilot.batch.runner`) lives here: an upload or a create is
recorded before it is sent, sent once (``x-ratepilot-retry: never``: a 500 or a cut-off answer may come after the
server acted), and a fault leaves the intent for the next step to reconcile — by the shard file's name or the
batch's metadata — as after a crash. Also the 2,000 creations per hour, ``output_expires_after``, and adopting a
job's batches when its local state was lost (:mod:`.adopt`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import openai

from ..client.plan import RETRY_HEADER
from ..poll import _TRANSIENT as TRANSIENT_POLL_ERRORS  # the one classification of a missed poll
from .adopt import find_lost, match_lost
from .base import (
    MAX_CREATE_FAULTS,
    JobConflictError,
    RunnerBase,
    job_config,
)
from .crash import crash_point
from .state import JobRecord, ShardRecord, ShardState

if TYPE_CHECKING:
    from openai import OpenAI

__all__ = ["Submission"]


class Submission(RunnerBase):
    """The submission part of :class:`~ratepilot.batch.runner.BatchRunner` (see the module docstring)."""

    def _adopt_lost(self, job: JobRecord) -> None:
        """Before a fresh plan uploads anything, ask the server whether this job's batches already exist (the
        local state that tracked them was lost): adopt them, or refuse if they do not fit the plan. Once per job:
        the check and the adoption are recorded in one transaction, so a crash in between checks again."""
        shards = self.store.shards(job)
        fresh = all(s.state == ShardState.PLANNED and s.submit_no == 0 for s in shards)
        found = (
            find_lost(self.client.batches.list(limit=100), job.name, job.fingerprint, now=self.clock.wall())
            if fresh
            else []
        )
        fits = functools.partial(self._file_fits, job)
        adoption = match_lost(found, shards, fits) if found else None
        if isinstance(adoption, str):
            raise JobConflictError(f"job {job.name!r}: {adoption}")
        checked = json.dumps({**job_config(job), "server_checked": True})
        if adoption is None:
            self.store.update_job(job, config=checked)
            return
        by_no = {s.shard: s for s in shards}
        with self.store.bulk():
            self.store.update_job(job, nonce=adoption.nonce, config=checked)
            for number, batch in adoption.batches.items():
                self.store.update_shard(
                    by_no[number],
                    state=ShardState.SUBMITTED,
                    submit_no=int(dict(batch.metadata)["ratepilot_submit"]),
                    file_id=batch.input_file_id,
                    batch_id=batch.id,
                    event="adopted",
                    detail=batch.id,
                )
            self.store.log(
                job,
                "adopted",
                f"{len(adoption.batches)} batch(es) found on the server; {len(adoption.skipped)} of retry rounds not",
            )
        for number, batch in adoption.batches.items():
            self._schedule_next(job, by_no[number], batch, first=True)
            self._apply_batch(job, by_no[number], batch)

    def _file_fits(self, job: JobRecord, nonce: str, shard: ShardRecord, batch: Any) -> bool:
        """Whether ``batch`` ran the file this plan (under the lost plan's nonce) uploads for ``shard``."""
        try:
            obj = self.client.files.retrieve(batch.input_file_id)
        except openai.NotFoundError:
            # Deleted (the job finished, or it expired): the batch's own count of requests must do.
            counts = batch.request_counts
            return bool(counts is not None and counts.total == shard.n_requests)
        wanted = self._file_name(job, shard, nonce=nonce)
        return bool(obj.filename == wanted and obj.bytes == shard.n_bytes)

    def _file_name(self, job: JobRecord, shard: ShardRecord, *, nonce: str | None = None) -> str:
        return f"ratepilot-{job.name}-{nonce or job.nonce}-{shard.shard:05d}.jsonl"

    def _upload(self, job: JobRecord, shard: ShardRecord) -> None:
        self.store.update_shard(shard, state=ShardState.UPLOADING, intent_at=self.clock.wall(), event="upload-intent")
        crash_point("after-upload-intent")
        obj = None
        with open(shard.path, "rb") as fh, self._at_most_once(job, shard):
            obj = self._once.files.create(
                file=(self._file_name(job, shard), fh), purpose="batch", extra_headers={RETRY_HEADER: "never"}
            )
        if obj is None:
            return  # a fault: the intent stays, and the next step finds out whether the file arrived
        crash_point("after-upload")
        self._uploaded(shard, obj, "uploaded")

    def _uploaded(self, shard: ShardRecord, obj: Any, event: str) -> None:
        """Record the shard's file on the server (uploaded now, or found by its name after a fault or a crash)."""
        self.store.update_shard(
            shard, state=ShardState.UPLOADED, file_id=obj.id, file_created_at=obj.created_at, event=event, detail=obj.id
        )

    @property
    def _once(self) -> OpenAI:
        """The client for calls that create something: no retry of faults by the SDK (nor by a Pilot: see
        ``RETRY_HEADER``), since a 500 or a dropped answer may come after the server created the object."""
        if self._once_client is None:
            self._once_client = self.client.with_options(max_retries=0)
        return self._once_client

    @contextmanager
    def _at_most_once(self, job: JobRecord, shard: ShardRecord) -> Iterator[None]:
        """Around an upload or a create sent once: a fault (500, timeout, dropped answer) is not retried blindly.
        The intent recorded before the call stays, so the loop reconciles next — lists what the server has, as
        after a crash — and only then sends again. A run of faults in a row (the server is down) is raised."""
        key = (job.id, shard.shard)
        try:
            yield
        except TRANSIENT_POLL_ERRORS as exc:
            faults = self._create_faults.get(key, 0) + 1
            self._create_faults[key] = faults
            self.store.log(job, "create-fault", f"{type(exc).__name__}; reconciling", shard=shard.shard)
            if faults >= MAX_CREATE_FAULTS:
                raise
            self.clock.sleep(min(30.0, 0.5 * 2 ** (faults - 1)))  # back off before looking (and sending) again
            return
        self._create_faults.pop(key, None)

    def _reconcile_upload(self, job: JobRecord, shard: ShardRecord) -> None:
        wanted = self._file_name(job, shard)
        for obj in self.client.files.list(purpose="batch"):
            if obj.filename == wanted and obj.bytes == shard.n_bytes and obj.status != "error":
                self._uploaded(shard, obj, "upload-reconciled")
                return
        self.store.update_shard(shard, state=ShardState.PLANNED, event="upload-not-found")

    def _metadata(self, job: JobRecord, shard: ShardRecord) -> dict[str, str]:
        return {
            "ratepilot_job": job.name,
            "ratepilot_input": job.fingerprint,  # with the name: finds the job's batches if local state is lost
            "ratepilot_nonce": job.nonce,
            "ratepilot_shard": str(shard.shard),
            "ratepilot_submit": str(shard.submit_no),
        }

    def _create(self, job: JobRecord, shard: ShardRecord) -> None:
        waited: dict[str, Any] = {"error_code": None} if shard.error_code == "capacity_wait" else {}
        self.store.update_shard(
            shard,
            state=ShardState.CREATING,
            submit_no=shard.submit_no + 1,
            intent_at=self.clock.wall(),
            event="create-intent",
            **waited,
        )
        crash_point("after-create-intent")
        assert shard.file_id is not None
        batch = None
        with self._at_most_once(job, shard):
            batch = self._once.batches.create(
                input_file_id=shard.file_id,
                endpoint=shard.url,  # type: ignore[arg-type]  # validated against the Batch API's endpoints
                completion_window=self.config.completion_window,  # type: ignore[arg-type]
                metadata=self._metadata(job, shard),
                extra_headers={RETRY_HEADER: "never"},
                **self._expiry(),
            )
        if batch is None:
            return  # a fault: the intent stays, and the next step finds out (by metadata) whether it exists
        crash_point("after-create")
        self.store.update_shard(shard, state=ShardState.SUBMITTED, batch_id=batch.id, event="created", detail=batch.id)
        self._schedule_next(job, shard, batch, first=True)
        self._apply_batch(job, shard, batch)

    def _creation_wait(self) -> float:
        """Seconds until one more batch may be created under ``max_creations_per_hour`` (every job of this state
        directory counts: they share the organization's limit)."""
        now = self.clock.wall()
        recent = self.store.event_times("create-intent", now - 3_600)
        over = len(recent) - self.config.max_creations_per_hour
        return 0.0 if over < 0 else max(0.0, recent[over] + 3_600 - now)

    def _expiry(self) -> dict[str, Any]:
        after = self.config.output_expires_after
        return {} if after is None else {"output_expires_after": {"anchor": "created_at", "seconds": after}}

    def _reconcile_create(self, job: JobRecord, shard: ShardRecord) -> None:
        wanted = self._metadata(job, shard)
        since = shard.file_created_at or 0
        for batch in self.client.batches.list(limit=100):
            meta = dict(batch.metadata or {})
            if all(meta.get(k) == v for k, v in wanted.items()):
                self.store.update_shard(
                    shard, state=ShardState.SUBMITTED, batch_id=batch.id, event="create-reconciled", detail=batch.id
                )
                self._schedule_next(job, shard, batch, first=True)
                self._apply_batch(job, shard, batch)
                return
            if batch.created_at < since:
                break  # newest first: older than the shard's file, so our batch cannot come later
        self.store.update_shard(shard, state=ShardState.UPLOADED, event="create-not-found")
