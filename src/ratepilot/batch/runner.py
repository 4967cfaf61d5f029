"""The synchronous driver of the Batch pipeline: a short loop around :func:`machine.next_action`.

Every server-side effect follows the same pattern, which is what makes ``kill -9`` at any point safe:

1. commit the intent (``uploading`` / ``creating``, with the submission number) to SQLite;
2. make the call (upload the shard file / create the batch, whose metadata names job, nonce, shard and
   submission number);
3. commit the outcome (file id / batch id).

A process killed between 1 and 3 leaves the intent; the next run *reconciles* it: it lists files (by the
shard's unique file name) or batches (by metadata, newest first, stopping at the shard file's creation time)
and adopts what it finds, and only creates when nothing matches — so a batch is never created twice.
Downloads are written to ``*.part`` and renamed, and a shard's results are indexed and marked collected in
one transaction, so a crash while collecting just repeats the collect.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import orjson

from .. import paths
from ..client import wire
from ..client.plan import RETRY_HEADER
from ..clock import Clock, SystemClock, any_of
from ..errors import RatePilotError
from ..joblock import job_lock
from ..limits import key_id_for
from ..poll import _TRANSIENT as TRANSIENT_POLL_ERRORS  # the one classification of a missed poll
from ..poll import KINDS, PRIORITY_HEADER, GiveUp, Poll, PollSchedule, snapshot
from ..protocol.pricing import PriceTable
from ..requests import RequestLine
from ..results import ForeignResultsError, error_result, fsync_dir, open_results, read_marker
from ..store import DEFAULT_DB_NAME, JobRecord, LineState, ShardRecord, ShardState, Store
from .adopt import find_lost, match_lost
from .collect import CollectSummary, index_result_file, write_ordered_results
from .config import BatchConfig
from .crash import crash_point
from .machine import (
    SIZE_REJECTIONS,
    TERMINAL_BATCH_STATUSES,
    AwaitCapacity,
    Collect,
    Create,
    Done,
    PlanRetry,
    ReconcileCreate,
    ReconcileUpload,
    Refresh,
    Upload,
    batch_changes,
    line_outcome,
    next_action,
    parse_size_limit,
    parse_token_limit,
    unanswered_outcome,
)
from .online import OnlineFallback, answer_online
from .plan import ShardWriter, exact_token_estimate
from .prepare import BatchInputError, _record, fingerprint, plan_job

if TYPE_CHECKING:
    from openai import OpenAI

    from ..webhooks import Subscription, WebhookReceiver

__all__ = [
    "BatchRunner",
    "CollectSummary",
    "JobConflictError",
    "JobNotFoundError",
    "JobStatus",
    "OnlineFallback",
    "check_output",
    "default_job_name",
]

WEBHOOK_BACKSTOP_SECONDS = 1800.0
"""With webhooks, a batch is still retrieved at least this often, in case its event was lost."""
MAX_CREATE_FAULTS = 8
"""Faults in a row on one shard's upload or create (each followed by a reconcile) before the error is raised."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class JobNotFoundError(RatePilotError, LookupError):
    """No job of that name in this state directory."""


class JobConflictError(RatePilotError, ValueError):
    """A job of that name exists but was planned from different input."""


@dataclass(frozen=True)
class JobStatus:
    """A job as recorded: line counts, shards, money spent so far and an ETA for the running batches."""

    name: str
    state: str
    url: str
    total: int
    done: int
    failed: int
    retry: int
    pending: int
    cost_usd: float
    eta_seconds: float | None
    shards: tuple[ShardRecord, ...] = field(repr=False)
    failure_codes: Mapping[str, int] = field(default_factory=dict)
    polled_at: float | None = None
    """Wall time (the runner's clock) of the last look at the running batches; ``None`` if none runs."""
    now: float = 0.0
    """Wall time (the runner's clock) this status was taken at."""

    @property
    def complete(self) -> bool:
        """Every line has its final answer (success or a failure that will not be retried)."""
        return self.pending == 0 and self.retry == 0 and self.total > 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = self.complete
        data["shards"] = [{k: v for k, v in asdict(s).items() if k not in ("job", "path")} for s in self.shards]
        return data


def check_output(output: str | os.PathLike[str], name: str) -> None:
    """Raise :class:`~ratepilot.results.ForeignResultsError` if ``output`` holds results of another job (or
    anything not written by ratepilot): checked before submitting, so a doomed job is never paid for."""
    path = Path(output)
    marker = read_marker(path)
    if marker is None:
        if path.exists() and path.stat().st_size > 0:
            raise ForeignResultsError(
                f"{path} already exists and was not written by ratepilot; choose another output file"
            )
        return
    if not marker.job_id.startswith(f"batch:{name}:"):
        raise ForeignResultsError(f"{path} holds results of another job ({marker.job_id}); choose another output")


def default_job_name(path: Path) -> str:
    """``<file stem>-<8 hex of the absolute path>``: the same command on the same file is the same job."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.")[:40] or "job"
    return f"{stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"


class BatchRunner:
    """Submit, track, collect, retry and resume Batch jobs through an OpenAI client.

    ``client``: an ``openai.OpenAI`` (ideally ``pilot.wrap(OpenAI())``, so every upload, poll and list is
    throttled). ``receiver``: a :class:`ratepilot.webhooks.WebhookReceiver` reached by the API's
    ``batch.*`` webhooks: then running batches are not polled, only confirmed when their event arrives.
    State lives in ``state_dir`` (default :func:`ratepilot.paths.state_dir`): the SQLite database
    and, per job, ``batches/<name>/`` with shard files and downloaded results.
    """

    def __init__(
        self,
        client: OpenAI,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        config: BatchConfig | None = None,
        clock: Clock | None = None,
        prices: PriceTable | None = None,
        fallback: OnlineFallback | None = None,
        on_progress: Callable[[JobStatus], None] | None = None,
        close_client: bool = False,
        receiver: WebhookReceiver | None = None,
    ) -> None:
        self.client = client
        self._close_client = close_client
        self.state_dir = Path(state_dir) if state_dir is not None else paths.state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config = config or BatchConfig()
        self.clock: Clock = clock or SystemClock()
        self.prices = prices or PriceTable()
        self.fallback = fallback
        self.on_progress = on_progress
        self.store = Store(self.state_dir / DEFAULT_DB_NAME, wall=self.clock.wall)
        self.key_id = _key_id(client)
        self._next_poll: dict[tuple[int, int], float] = {}
        self._schedules: dict[tuple[int, int], PollSchedule] = {}
        self.receiver = receiver
        self._subs: dict[tuple[int, int], Subscription] = {}
        self._owned: set[str] = set()  # job names this runner holds the lock of (see _owning)
        self._once_client: OpenAI | None = None
        self._create_faults: dict[tuple[int, int], int] = {}  # faults in a row per shard (see _at_most_once)

    def close(self) -> None:
        for key in list(self._subs):
            self._unsubscribe(key)
        self.store.close()
        if self._close_client:
            self.client.close()

    def __enter__(self) -> BatchRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ public API
    def prepare(
        self, requests: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *, name: str | None = None
    ) -> JobRecord:
        """Validate and plan a job (or find it, when the same input was planned before). Nothing is uploaded.

        Raises :class:`~ratepilot.batch.prepare.BatchInputError` (bad input; nothing uploaded) or
        :class:`JobConflictError` (the name is taken by a job with other input).
        """
        if isinstance(requests, str | os.PathLike):
            path = Path(requests).resolve()
            if not path.is_file():
                raise BatchInputError(str(path), reason="no such file")
            fp = fingerprint(path)
        else:
            path, fp = self._materialize(requests, name)
        name = name or default_job_name(path)
        if not _NAME.match(name):
            raise BatchInputError(name, reason="job names are 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)")
        with self._owning(name):
            return self._prepare_owned(name, path, fp)

    def _prepare_owned(self, name: str, path: Path, fp: str) -> JobRecord:
        job = self.store.get_job(name)
        if job is not None and job.state != "planning":
            if job.fingerprint != fp:
                raise JobConflictError(
                    f"job {name!r} was planned from different input ({job.input_path}); "
                    "pass another --name, or `ratepilot batch forget` it first"
                )
            return job
        if job is None:
            job = self.store.create_job(
                JobRecord(
                    name=name,
                    input_path=str(path),
                    fingerprint=fp,
                    nonce=secrets.token_hex(4),
                    config=json.dumps(_config_dict(self.config)),
                    key_id=self.key_id,
                )
            )
        else:
            self.store.clear_plan(job)  # killed while planning: nothing was uploaded, plan again
        try:
            plan_job(self.store, job, path, self._job_dir(job), self.config, token_cap=self._token_limit)
        except BaseException:
            self.store.delete_job(job)
            shutil.rmtree(self._job_dir(job), ignore_errors=True)
            raise
        crash_point("after-plan")
        return job

    def submit(
        self, requests: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *, name: str | None = None
    ) -> JobStatus:
        """Prepare the job and upload + create every shard the enqueued-token budget admits now; then return.

        Re-running it resumes: intents left by a crash are reconciled, nothing is created twice. A cancelled
        job is reactivated (its unfinished lines are submitted again).
        """
        job = self.prepare(requests, name=name)
        if job.state == "cancelled":
            self.store.update_job(job, state="active")
        self._drive(job, block=False)
        return self.status(job.name)

    def wait(self, name: str, *, timeout: float | None = None) -> JobStatus:
        """Drive the job until every line has its final answer: poll, submit deferred shards, collect, retry.

        Returns the status (``complete`` may be False when ``timeout`` — seconds of the runner's clock — ran out).
        """
        job = self._job(name)
        self._drive(job, block=True, timeout=timeout)
        return self.status(name)

    def run(
        self,
        requests: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
        output: str | os.PathLike[str],
        *,
        name: str | None = None,
        timeout: float | None = None,
    ) -> CollectSummary:
        """Submit, wait and collect in one call (what ``ratepilot run --mode batch`` uses)."""
        status = self.submit(requests, name=name)
        self.wait(status.name, timeout=timeout)
        return self.collect(status.name, output)

    def collect(self, name: str, output: str | os.PathLike[str], *, overwrite: bool = False) -> CollectSummary:
        """Write the job's results to ``output`` in input order (the shared result-line format).

        Shards whose batch is terminal are downloaded and indexed first. Lines with no answer yet (still
        running, or waiting for a retry) are left out and counted as ``missing``; collect again later to get
        them. The file is rewritten from the index each time, so a collect killed halfway is simply repeated.
        """
        job = self._job(name)
        self._drive(job, block=False, collect_only=True)
        return self._write_results(job, Path(output), overwrite=overwrite)

    def cancel(self, name: str, *, wait: bool = True, timeout: float | None = None) -> JobStatus:
        """Cancel the job's running batches and stop submitting; finished results are kept (collect them).

        ``submit`` on the same input reactivates the job and resubmits what did not finish.
        """
        job = self._job(name)
        self.store.update_job(job, state="cancelled")
        self._drive(job, block=False, collect_only=True)  # settle intents first, so no batch is missed
        for shard in self.store.shards(job):
            if shard.state == ShardState.SUBMITTED and shard.batch_id:
                batch = self.client.batches.cancel(shard.batch_id)
                self._apply_batch(job, shard, batch)
        if wait:
            self._drive(job, block=True, timeout=timeout)
        return self.status(name)

    def status(self, name: str) -> JobStatus:
        job = self._job(name)
        shards = tuple(self.store.shards(job))
        counts = self.store.line_counts(job)
        return JobStatus(
            name=job.name,
            state=job.state,
            url=job.url,
            total=job.total,
            done=counts[LineState.DONE],
            failed=counts[LineState.FAILED],
            retry=counts[LineState.RETRY],
            pending=counts[LineState.PENDING],
            cost_usd=sum(s.cost_usd for s in shards),
            eta_seconds=_eta(shards, self.clock.wall()),
            polled_at=last_polled(shards),
            now=self.clock.wall(),
            shards=shards,
            failure_codes=self.store.line_codes(job, LineState.FAILED),
        )

    def refresh(self, name: str) -> JobStatus:
        """Retrieve each running batch of the job once (low priority, the polling code path: the state is
        recorded) and return the fresh status. Nothing is created, downloaded or collected."""
        job = self._job(name)
        running = [s for s in self.store.shards(job) if s.state == ShardState.SUBMITTED and s.batch_id]
        if running:
            self._poll(running, job, force=True)
        return self.status(name)

    def jobs(self) -> list[JobRecord]:
        return self.store.list_jobs()

    def forget(self, name: str) -> None:
        """Delete a job's local state (server-side batches and files are left alone)."""
        job = self._job(name)
        self.store.delete_job(job)
        shutil.rmtree(self._job_dir(job), ignore_errors=True)

    # ------------------------------------------------------------------------------------------ the loop
    @contextmanager
    def _owning(self, name: str) -> Iterator[None]:
        """Own job ``name`` for the block: one process at a time plans, submits, polls or collects it (two
        ``batch submit --name X`` at once would create every batch twice). Re-entrant within this runner; a
        second process gets :class:`~ratepilot.joblock.JobLocked` at once (exit 5). See :mod:`ratepilot.joblock`.
        """
        if name in self._owned:
            yield
            return
        with job_lock(self.state_dir / "locks" / f"{name}.lock", f"batch job {name!r}"):
            self._owned.add(name)
            try:
                yield
            finally:
                self._owned.discard(name)

    def _drive(self, job: JobRecord, *, block: bool, timeout: float | None = None, collect_only: bool = False) -> None:
        with self._owning(job.name):
            self._drive_owned(job, block=block, timeout=timeout, collect_only=collect_only)

    def _drive_owned(self, job: JobRecord, *, block: bool, timeout: float | None, collect_only: bool) -> None:
        deadline = None if timeout is None else self.clock.now() + timeout
        if self.key_id and not job.key_id:  # a job recorded before keys were: it is driven with this one
            self.store.update_job(job, key_id=self.key_id)
        if self.config.keep_files:
            self._remember_keep_files(job)
        if not collect_only and job.state != "cancelled" and not _job_config(job).get("server_checked"):
            self._adopt_lost(job)
        while True:
            shards = self.store.shards(job)
            accepting = job.state != "cancelled" and not collect_only
            retry_waiting = self._settle_retries(job, shards) if accepting and _quiet(shards) else False
            action = next_action(
                shards,
                token_limit=self._token_limit,
                retry_waiting=retry_waiting,
                accepting=accepting,
                others_pending=lambda model: self.store.in_flight_tokens(model, key_id=job.key_id, exclude_job=job.id),
            )
            by_no = {s.shard: s for s in shards}
            match action:
                case ReconcileUpload(n):
                    self._reconcile_upload(job, by_no[n])
                case Upload(n):
                    self._upload(job, by_no[n])
                case ReconcileCreate(n):
                    self._reconcile_create(job, by_no[n])
                case Create(n):
                    wait = self._creation_wait()
                    if wait > 0:  # the API's creations-per-hour limit: wait for a slot rather than be refused
                        if not block or (deadline is not None and self.clock.now() + wait > deadline):
                            self.store.log(job, "creation-limit", f"{wait:.0f}s", shard=n)
                            return
                        self.clock.sleep(wait)
                        continue
                    self._create(job, by_no[n])
                case Collect(n):
                    self._collect_shard(job, by_no[n])
                case PlanRetry():
                    self._plan_retry(job, shards)
                case Refresh(numbers):
                    if collect_only and not block:
                        self._poll([by_no[n] for n in numbers], job, force=True)
                        self._collect_finished(job)
                        return
                    if not block:
                        return
                    wait = self._poll([by_no[n] for n in numbers], job)
                    if wait > 0:
                        if deadline is not None:
                            remaining = deadline - self.clock.now()
                            if remaining <= 0:
                                return
                            # Not a return after this sleep: a webhook may end it early, and then the
                            # woken batch is retrieved and the job goes on until the deadline.
                            wait = min(wait, remaining)
                        self._sleep(job, numbers, wait)
                case AwaitCapacity(models):
                    if not block:
                        self._log_capacity_wait(job, shards)
                        return
                    self._await_capacity(job, shards, models, deadline)
                    if deadline is not None and self.clock.now() >= deadline:
                        return
                case Done(blocked):
                    if not blocked and accepting and job.state != "done":
                        if not self._keeps_files(job):
                            # before "done": a crash in between deletes again on the rerun (a 404 is fine)
                            self._delete_inputs(job)
                        self.store.update_job(job, state="done")
                    return
            if self.on_progress is not None:
                self.on_progress(self.status(job.name))

    def _log_capacity_wait(self, job: JobRecord, shards: list[ShardRecord]) -> None:
        """Record (once per shard and submission) that a shard waits for other jobs' enqueued tokens."""
        for s in shards:
            if s.state == ShardState.UPLOADED and s.error_code != "capacity_wait":
                # error_code marks it, so status shows why and the event is logged once, not on every loop.
                self.store.update_shard(s, error_code="capacity_wait", event="capacity-wait", detail=s.model)

    def _await_capacity(
        self, job: JobRecord, shards: list[ShardRecord], models: tuple[str, ...], deadline: float | None
    ) -> None:
        """Our uploaded shards wait for enqueued-token capacity held by other jobs of this state directory.

        Those jobs may have no process tracking them, so their running batches are retrieved here (low
        priority, recorded like any poll: a finished one frees the capacity; its own job collects it later),
        at the poll interval.
        """
        self._log_capacity_wait(job, shards)
        interval = self.config.poll_interval if self.config.poll_interval is not None else 60.0
        if deadline is not None:
            interval = min(interval, max(0.0, deadline - self.clock.now()))
        self.clock.sleep(interval)
        for model in models:
            for shard in self.store.submitted_shards(model, key_id=job.key_id, exclude_job=job.id):
                other = self.store.get_job_by_id(shard.job)
                if other is None:
                    continue
                assert shard.batch_id is not None
                try:
                    batch = self.client.batches.retrieve(shard.batch_id, extra_headers={PRIORITY_HEADER: "low"})
                except TRANSIENT_POLL_ERRORS:
                    continue  # looked at again after the next interval
                except openai.APIStatusError as exc:
                    # Another job's problem (its batch gone, another project's key): recorded on that job, whose
                    # own wait deals with it; this job keeps waiting (until its --timeout), it does not fail.
                    self.store.log(
                        other, "capacity-check-failed", f"{exc.status_code} {exc.code or ''}".strip(), shard.shard
                    )
                    continue
                self._apply_batch(other, shard, batch)

    def _collect_finished(self, job: JobRecord) -> None:
        for shard in self.store.shards(job):
            if shard.state == ShardState.FINISHED:
                self._collect_shard(job, shard)

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
        checked = json.dumps({**_job_config(job), "server_checked": True})
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

    # ------------------------------------------------------------------------------------------ upload
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
        self.store.update_shard(
            shard,
            state=ShardState.UPLOADED,
            file_id=obj.id,
            file_created_at=obj.created_at,
            event="uploaded",
            detail=obj.id,
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
                self.store.update_shard(
                    shard,
                    state=ShardState.UPLOADED,
                    file_id=obj.id,
                    file_created_at=obj.created_at,
                    event="upload-reconciled",
                    detail=obj.id,
                )
                return
        self.store.update_shard(shard, state=ShardState.PLANNED, event="upload-not-found")

    # ------------------------------------------------------------------------------------------ create
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

    # ------------------------------------------------------------------------------------------ tracking
    def _poll(self, shards: list[ShardRecord], job: JobRecord, *, force: bool = False) -> float:
        """Retrieve the shards that are due; return how long until the next one is due (0: poll again now).

        Each running batch has its own schedule: a fixed ``poll_interval``, or (default) a
        :class:`ratepilot.poll.PollSchedule`, which polls rarely while a batch validates and then aims at its
        predicted end; with a webhook receiver it does not poll at all but waits for the batch's event (and
        retrieves once to confirm), with a slow backstop poll in case an event is lost. Retrieves carry the
        low-priority header, so a pilot-wrapped client lets real work go first.
        """
        now = self.clock.now()
        changed = False
        for shard in shards:
            key = (job.id, shard.shard)
            sub = self._subs.get(key)
            woken = sub is not None and sub.woken
            if not (force or woken or self._next_poll.get(key, 0.0) <= now):
                continue
            assert shard.batch_id is not None
            try:
                batch = self.client.batches.retrieve(shard.batch_id, extra_headers={PRIORITY_HEADER: "low"})
            except TRANSIENT_POLL_ERRORS:
                # A network blip or a 5xx must not end an hours-long wait: a missed poll, looked at again
                # after a back-off, as ratepilot.poll.wait does; only a run of failures is raised.
                if sub is not None and woken:
                    sub.rearm()  # else the still-set wake-up would retry at once, without the back-off
                if self._missed_poll(key):
                    raise
                continue
            if sub is not None and woken:
                # recorded, so a job's log shows what drove it (the event's type only: ids are in the shard)
                self.store.log(job, "webhook", sub.event.type if sub.event else "", shard=shard.shard)
                sub.rearm()  # if the batch is not terminal yet, the confirming retrieves take over
            self._schedule_next(job, shard, batch, woken=woken)
            self._apply_batch(job, shard, batch)
            if shard.state != ShardState.SUBMITTED:
                self._unsubscribe(key)
                changed = True
                if not force:
                    break  # something changed: decide again (collect, create a deferred shard) first
        if changed:
            return 0.0
        nexts = [self._next_poll.get((job.id, s.shard), 0.0) for s in shards]
        return max(0.0, min(nexts) - self.clock.now()) if nexts else 0.0

    def _schedule_next(
        self, job: JobRecord, shard: ShardRecord, batch: Any, *, first: bool = False, woken: bool = False
    ) -> None:
        key = (job.id, shard.shard)
        now = self.clock.now()
        if first and self.receiver is not None and key not in self._subs:
            self._subs[key] = self.receiver.subscribe(str(batch.id))
        if self.config.poll_interval is not None:
            self._schedules.pop(key, None)  # only ever a missed-poll counter here (see _missed_poll): reset it
            self._next_poll[key] = now + self.config.poll_interval
            return
        kind = KINDS["batch"]
        schedule = self._schedules.get(key)
        if first or schedule is None:
            schedule = PollSchedule.begin(
                kind, now=now, wall=self.clock.wall(), policy=self.config.poll_policy, webhooks=key in self._subs
            )
            self._schedules[key] = schedule
            decision = schedule.start(snapshot(kind, batch), now)
        else:
            decision = schedule.observe(snapshot(kind, batch), now, woken=woken)
        after = decision.after if isinstance(decision, Poll) else 0.0
        self._next_poll[key] = now + min(after, WEBHOOK_BACKSTOP_SECONDS)

    def _missed_poll(self, key: tuple[int, int]) -> bool:
        """A retrieve failed transiently: schedule the next look after the poll schedule's back-off. True when
        too many retrieves in a row failed (the caller re-raises the error)."""
        now = self.clock.now()
        schedule = self._schedules.get(key)
        if schedule is None:  # fixed --poll-interval: a schedule just to count failures and back off
            schedule = PollSchedule.begin(
                KINDS["batch"], now=now, wall=self.clock.wall(), policy=self.config.poll_policy
            )
            self._schedules[key] = schedule
        decision = schedule.failed(now)
        if isinstance(decision, GiveUp):
            return True
        after = decision.after if isinstance(decision, Poll) else 0.0
        if self.config.poll_interval is not None:
            after = max(after, self.config.poll_interval)
        self._next_poll[key] = now + min(after, WEBHOOK_BACKSTOP_SECONDS)
        return False

    def _sleep(self, job: JobRecord, numbers: tuple[int, ...], seconds: float) -> None:
        """Sleep until the next poll is due, or until a webhook announces one of these batches' end."""
        subs = [self._subs[(job.id, n)] for n in numbers if (job.id, n) in self._subs]
        if not subs:
            self.clock.sleep(seconds)
            return
        with any_of(*(sub.wakeup for sub in subs)) as woken:  # whichever batch's webhook comes first
            self.clock.wait(woken, seconds)

    def _unsubscribe(self, key: tuple[int, int]) -> None:
        sub = self._subs.pop(key, None)
        if sub is not None:
            sub.close()
        self._schedules.pop(key, None)

    def _apply_batch(self, job: JobRecord, shard: ShardRecord, batch: Any) -> None:
        changes = batch_changes(batch)
        status = changes["batch_status"]
        if status == "failed" and changes.get("error_code") == "token_limit_exceeded":
            self._defer(job, shard, str(changes.get("error_message") or ""))
            return
        if status == "failed" and changes.get("error_code") in SIZE_REJECTIONS and self._resplit(job, shard, changes):
            return
        changes["cost_usd"] = self.prices.cost(
            shard.model, changes.get("input_tokens", 0), changes.get("output_tokens", 0), batch=True
        )
        if status in TERMINAL_BATCH_STATUSES:
            self.store.update_shard(shard, state=ShardState.FINISHED, event=f"batch-{status}", **changes)
        else:
            self.store.update_shard(shard, **changes)

    def _defer(self, job: JobRecord, shard: ShardRecord, message: str) -> None:
        """The batch failed over the enqueued-token limit: learn the limit, resubmit once capacity frees."""
        limit = parse_token_limit(message)
        if limit is not None and shard.model not in self.config.token_limits:
            self.store.set_token_limit(shard.model, limit, self.key_id)
        if (limit is not None and shard.est_tokens > limit) or shard.deferrals + 1 > self.config.max_deferrals:
            # It can never fit as it is: its lines go to the retry round, where they are re-packed under the
            # learned limit (or, out of attempts, reported with this code).
            with self.store.bulk():
                self.store.mark_unanswered(job, shard.shard, LineState.RETRY, "token_limit_exceeded")
                self.store.update_shard(
                    shard,
                    state=ShardState.COLLECTED,
                    batch_status="failed",
                    error_code="token_limit_exceeded",
                    error_message=message,
                    event="token-limit-resplit",
                )
            return
        self.store.update_shard(
            shard,
            state=ShardState.UPLOADED,
            batch_id=None,
            batch_status=None,
            deferrals=shard.deferrals + 1,
            error_code="token_limit_exceeded",
            error_message=message,
            event="token-limit-deferred",
            detail=str(limit),
        )

    def _resplit(self, job: JobRecord, shard: ShardRecord, changes: dict[str, Any]) -> bool:
        """The server refused the batch as too big (``too_many_tasks``, ``file_too_large``): learn its limit, and
        send the shard's lines to the retry round, re-packed under it. The refusal does not count as an attempt
        of those lines (none of them ran). False when the shard cannot get smaller (one line): it fails as is,
        with the server's message.
        """
        code = str(changes.get("error_code"))
        message = str(changes.get("error_message") or "")
        learned = parse_size_limit(code, message)
        if learned is None and code == "file_too_large":  # a message we cannot read: halve what it refused
            learned = ("max_bytes", shard.n_bytes // 2)
        elif learned is None:
            learned = ("max_requests", shard.n_requests // 2)
        field_name, limit = learned
        if shard.n_requests <= 1 or limit < 1:
            return False
        limits = dict(_job_config(job).get("learned_limits") or {})
        limits[field_name] = min(limit, int(limits.get(field_name, limit)))
        with self.store.bulk():
            self.store.update_job(job, config=json.dumps({**_job_config(job), "learned_limits": limits}))
            self.store.mark_unanswered(job, shard.shard, LineState.RETRY, code, refund_attempt=True)
            self.store.update_shard(
                shard,
                state=ShardState.COLLECTED,
                batch_status="failed",
                error_code=code,
                error_message=message,
                event="size-resplit",
                detail=f"{field_name}={limits[field_name]}",
            )
        return True

    def _shard_config(self, job: JobRecord) -> BatchConfig:
        """This runner's config, under the size limits the server taught this job (see :meth:`_resplit`)."""
        learned = _job_config(job).get("learned_limits") or {}
        if not learned:
            return self.config
        return replace(
            self.config,
            **{k: min(int(v), getattr(self.config, k)) for k, v in learned.items() if hasattr(self.config, k)},
        )

    def _token_limit(self, model: str) -> int | None:
        if model in self.config.token_limits:
            return self.config.token_limits[model]
        return self.store.token_limit(model, self.key_id)

    # ------------------------------------------------------------------------------------------ collect
    def _download(self, file_id: str, target: Path) -> None:
        if target.exists():
            return  # renamed into place only when complete
        part = target.with_name(target.name + ".part")
        for attempt in range(1, MAX_CREATE_FAULTS + 1):
            try:
                with self.client.files.with_streaming_response.content(file_id) as response, open(part, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                break
            except Exception as exc:
                # The transport retries a request that fails, but a body cut off while streaming surfaces here,
                # as the HTTP library's own error: the download starts over (the .part file is rewritten).
                if not _cut_off(exc) or attempt == MAX_CREATE_FAULTS:
                    raise
                self.clock.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
        os.replace(part, target)
        fsync_dir(target.parent)  # indexed (and the shard marked collected) next: the file must outlive a crash

    def _collect_shard(self, job: JobRecord, shard: ShardRecord) -> None:
        files: list[tuple[str, Path]] = []
        for kind, file_id in (("output", shard.output_file_id), ("error", shard.error_file_id)):
            if file_id:
                target = self._job_dir(job) / f"{kind}-{shard.shard:05d}-{shard.submit_no}.jsonl"
                self._download(file_id, target)
                files.append((kind, target))
                crash_point("during-collect")
        with self.store.bulk():
            for kind, target in files:
                file_no = self.store.add_file(job, str(target), kind)
                index_result_file(self.store, job, shard.shard, file_no, target)
            state, code = unanswered_outcome(shard.batch_status, shard.error_code)
            self.store.mark_unanswered(job, shard.shard, state, code)
            self.store.update_shard(shard, state=ShardState.COLLECTED, event="collected")

    def _keeps_files(self, job: JobRecord) -> bool:
        """Whether the job's input files stay on the server once it is done: asked for by this runner's
        config, or by the one that planned the job or drove it earlier (a later command without the flag must
        not delete what ``submit --keep-files`` meant to keep)."""
        return self.config.keep_files or bool(_job_config(job).get("keep_files"))

    def _remember_keep_files(self, job: JobRecord) -> None:
        """Record ``keep_files`` on the job (it may be turned on after submit, never off again)."""
        stored = _job_config(job)
        if not stored.get("keep_files"):
            self.store.update_job(job, config=json.dumps({**stored, "keep_files": True}))

    def _delete_inputs(self, job: JobRecord) -> None:
        """The job is finished: delete the input files it uploaded (they count against the organization's
        file storage and are never needed again). Best effort: a file that cannot be deleted is recorded in the
        job's events, not an error of a job whose results are all in."""
        for shard in self.store.shards(job):
            if shard.file_id is None:
                continue
            try:
                self.client.files.delete(shard.file_id)
            except openai.NotFoundError:
                pass  # deleted by an earlier run that crashed before the job was marked done (or expired)
            except (openai.APIError, RatePilotError) as exc:
                self.store.log(job, "input-delete-failed", f"{shard.file_id}: {type(exc).__name__}", shard=shard.shard)
                continue
            self.store.log(job, "input-deleted", shard.file_id, shard=shard.shard)
            crash_point("during-cleanup")

    def _write_results(self, job: JobRecord, output: Path, *, overwrite: bool) -> CollectSummary:
        writer = open_results(
            output,
            f"batch:{job.name}:{job.nonce}",
            requests=job.input_path,
            overwrite=overwrite,
            extra={"mode": "batch", "job": job.name},
        )
        writer.close()
        return write_ordered_results(self.store, job, output)

    # ------------------------------------------------------------------------------------------ retries
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

    # ------------------------------------------------------------------------------------------ helpers
    def _job(self, name: str) -> JobRecord:
        job = self.store.get_job(name)
        if job is None or job.state == "planning":
            raise JobNotFoundError(f"no batch job named {name!r} in {self.state_dir}")
        return job

    def _job_dir(self, job: JobRecord) -> Path:
        return self.state_dir / "batches" / job.name

    def _materialize(self, requests: Iterable[Mapping[str, Any]], name: str | None) -> tuple[Path, str]:
        """Write an iterable of requests to a JSONL in the state dir (streaming); fingerprint = content hash.

        The job planned from it refers to it by path, so it is made durable (file and rename) first.
        """
        directory = self.state_dir / "batches" / "_inputs"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-{secrets.token_hex(6)}.jsonl"
        digest = hashlib.sha256()
        with open(tmp, "wb", buffering=1 << 20) as fh:
            for item in requests:
                data = orjson.dumps(item) + b"\n"
                digest.update(data)
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        hexdigest = digest.hexdigest()
        target = directory / f"{name or 'requests'}-{hexdigest[:12]}.jsonl"
        os.replace(tmp, target)
        fsync_dir(directory)
        return target, f"sha256:{hexdigest}"


def _cut_off(exc: BaseException) -> bool:
    """A transient failure of a download: the SDK's, or the HTTP library's (httpx2 or httpx) for a body cut off."""
    if isinstance(exc, TRANSIENT_POLL_ERRORS):
        return True
    libs = [sys.modules[name] for name in ("httpx2", "httpx") if name in sys.modules]
    return any(wire.failure_kind(lib, exc) is not None for lib in libs)


def _key_id(client: Any) -> str:
    """The id of the client's API key (never the key): the enqueued-token limit is per organization, and jobs
    and learned limits are kept apart by key. '' when the client has no key to tell."""
    api_key = getattr(client, "api_key", None)
    return key_id_for(api_key) if isinstance(api_key, str) and api_key else ""


def _quiet(shards: list[ShardRecord]) -> bool:
    return all(s.state == ShardState.COLLECTED for s in shards)


def _eta(shards: tuple[ShardRecord, ...], now: float) -> float | None:
    """Seconds from ``now`` (the runner's wall clock, the time base of the shards' ``updated_at``) until the
    job's current batches finish, or ``None`` when that is unknown.

    Each running batch's rate is its progress between the server's ``in_progress_at`` and the last poll
    (``updated_at``); what the batch still needs at that rate, less the time since that poll. Unknown — rather
    than a wrong number — while any shard of the job waits to be created (deferred for enqueued-token capacity,
    not uploaded yet) or runs without measurable progress yet (validating, nothing finished).
    """
    worst = 0.0
    running = False
    for s in shards:
        if s.state in (ShardState.FINISHED, ShardState.COLLECTED):
            continue
        if s.state != ShardState.SUBMITTED:
            return None  # planned, uploaded (deferred), or an intent: its batch has not started
        finished = s.completed + s.failed
        elapsed = s.updated_at - (s.in_progress_at or 0.0)
        if not s.in_progress_at or not s.total or finished <= 0 or elapsed <= 0:
            return None
        running = True
        left = (s.total - finished) * elapsed / finished - (now - s.updated_at)
        worst = max(worst, left)
    return worst if running else None


def last_polled(shards: tuple[ShardRecord, ...]) -> float | None:
    """When the job's running batches were last looked at (the runner's wall clock), if any is running."""
    times = [s.updated_at for s in shards if s.state == ShardState.SUBMITTED]
    return max(times) if times else None


def _config_dict(config: BatchConfig) -> dict[str, Any]:
    data = asdict(config)
    data["token_limits"] = dict(config.token_limits)
    return data


def _job_config(job: JobRecord) -> dict[str, Any]:
    """The settings recorded on the job (its planner's :class:`BatchConfig`, plus later choices)."""
    try:
        data = json.loads(job.config or "{}")
    except ValueError:  # a damaged record: fall back to this runner's settings
        return {}
    return data if isinstance(data, dict) else {}
