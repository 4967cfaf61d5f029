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

This module holds the loop and the public API; the work is done by the runner's parts, one concept each, over the
state they share (:mod:`.base`): submitting (:mod:`.submission`), tracking (:mod:`.tracking`), collecting
(:mod:`.collecting`) and the retry rounds (:mod:`.retries`); a job's status is :mod:`.status`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .. import paths
from ..clock import Clock, SystemClock
from ..joblock import job_lock
from ..limits import key_id_for
from ..poll import PollSchedule
from ..protocol.pricing import PriceTable
from ..results import ForeignResultsError, fsync_dir, read_marker
from .base import JobConflictError, JobNotFoundError, job_config
from .collect import CollectSummary
from .collecting import Collecting
from .config import BatchConfig
from .crash import crash_point
from .machine import (
    AwaitCapacity,
    Collect,
    Create,
    JobDone,
    PlanRetry,
    ReconcileCreate,
    ReconcileUpload,
    Refresh,
    Upload,
    next_action,
)
from .online import OnlineFallback
from .prepare import BatchInputError, fingerprint, plan_job
from .retries import Retries
from .state import DEFAULT_DB_NAME, BatchState, JobRecord, LineState, ShardRecord, ShardState
from .status import JobStatus, eta, last_polled
from .submission import Submission
from .tracking import Tracking

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

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


class BatchRunner(Submission, Tracking, Collecting, Retries):
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
        self.store = BatchState(self.state_dir / DEFAULT_DB_NAME, wall=self.clock.wall)
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
            eta_seconds=eta(shards, self.clock.wall()),
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
        if not collect_only and job.state != "cancelled" and not job_config(job).get("server_checked"):
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
                case JobDone(blocked):
                    if not blocked and accepting and job.state != "done":
                        if not self._keeps_files(job):
                            # before "done": a crash in between deletes again on the rerun (a 404 is fine)
                            self._delete_inputs(job)
                        self.store.update_job(job, state="done")
                    return
            if self.on_progress is not None:
                self.on_progress(self.status(job.name))

    # ------------------------------------------------------------------------------------------ helpers
    def _job(self, name: str) -> JobRecord:
        job = self.store.get_job(name)
        if job is None or job.state == "planning":
            raise JobNotFoundError(f"no batch job named {name!r} in {self.state_dir}")
        return job

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


def _key_id(client: Any) -> str:
    """The id of the client's API key (never the key): the enqueued-token limit is per organization, and jobs
    and learned limits are kept apart by key. '' when the client has no key to tell."""
    api_key = getattr(client, "api_key", None)
    return key_id_for(api_key) if isinstance(api_key, str) and api_key else ""


def _quiet(shards: list[ShardRecord]) -> bool:
    return all(s.state == ShardState.COLLECTED for s in shards)


def _config_dict(config: BatchConfig) -> dict[str, Any]:
    data = asdict(config)
    data["token_limits"] = dict(config.token_limits)
    return data
