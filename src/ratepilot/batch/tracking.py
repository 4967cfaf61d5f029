"""Tracking a job's running batches: budgeted polls or webhook wake-ups, and what each batch's state means.

Each running batch has its own poll schedule (:class:`ratepilot.poll.PollSchedule`, or a fixed interval); with a
webhook receiver it is woken by its event instead, with a slow backstop poll. A batch's object is applied to its
shard here, including the server's refusals: over the enqueued-token limit (deferred until capacity frees) and
too big for the server (re-split under the limit it names).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import openai

from ..clock import any_of
from ..poll import _TRANSIENT as TRANSIENT_POLL_ERRORS  # the one classification of a missed poll
from ..poll import KINDS, PRIORITY_HEADER, Poll, PollSchedule, StopPolling, snapshot
from .base import (
    WEBHOOK_BACKSTOP_SECONDS,
    RunnerBase,
    job_config,
)
from .config import BatchConfig
from .machine import (
    SIZE_REJECTIONS,
    TERMINAL_BATCH_STATUSES,
    batch_changes,
    parse_size_limit,
    parse_token_limit,
)
from .state import JobRecord, LineState, ShardRecord, ShardState

__all__ = ["Tracking"]


class Tracking(RunnerBase):
    """The tracking part of :class:`~ratepilot.batch.runner.BatchRunner` (see the module docstring)."""

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
        if isinstance(decision, StopPolling):
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
        limits = dict(job_config(job).get("learned_limits") or {})
        limits[field_name] = min(limit, int(limits.get(field_name, limit)))
        with self.store.bulk():
            self.store.update_job(job, config=json.dumps({**job_config(job), "learned_limits": limits}))
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
        learned = job_config(job).get("learned_limits") or {}
        if not learned:
            return self.config
        return replace(
            self.config,
            **{k: min(int(v), getattr(self.config, k)) for k, v in learned.items() if hasattr(self.config, k)},
        )
