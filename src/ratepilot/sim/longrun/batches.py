"""The Batch API lifecycle as a sans-IO state machine, advanced lazily to any instant of the clock.

``validating -> in_progress -> finalizing -> completed``, or ``-> failed`` (validation, enqueued-token
limit), ``-> expired`` (window over: finished lines kept, the rest get ``batch_expired`` error lines), or
``cancelling -> cancelled`` (finished lines kept). Nothing runs in the background: :meth:`BatchBook.advance`
replays every transition due up to ``now`` in time order (so one batch's enqueued-token check sees the others
as they were at that instant), and executes the lines whose turn has come.

Lines run in a seeded shuffled order at ``batch_lines_per_second``; line ``k`` of that order finishes at
``in_progress_at + (k + 1) / rate``. The output file lists lines in that order, which is not input order,
exactly as users see from the real service.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ...protocol.errors import server_error
from .batch_validation import BatchValidation, batch_error
from .config import LongrunConfig
from .ids import new_id

log = logging.getLogger("ratepilot.sim")

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Batch",
    "BatchBook",
    "BatchHost",
    "token_limit_error",
]

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
ACTIVE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_ENQUEUED = frozenset({"in_progress", "finalizing", "cancelling"})

OUTPUT_RETENTION_S = 30 * 86_400.0  # output files of a batch without output_expires_after: deleted after 30 days
BATCH_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class BatchHost(Protocol):
    """What a batch needs from the simulator around it (the only side effects it has)."""

    def execute(
        self, endpoint: str, body: dict[str, Any], org: str, *, batch: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """Run one request through the synchronous endpoints' responders, without rate limiting; a success is
        billed (at the batch price, 50%, with ``batch=True``)."""
        ...

    def add_file(
        self, org: str, filename: str, purpose: str, content: bytes, at: float, expires: float | None = None
    ) -> str:
        """Store a generated file (``expires``: clock time it is deleted at); returns its id."""
        ...

    def emit(self, event_type: str, object_id: str, at: float) -> None:
        """A webhook-worthy transition happened at clock time ``at``."""
        ...


def token_limit_error(model: str, org: str, limit: int) -> dict[str, Any]:
    """The exact ``errors.data`` entry of a batch over the enqueued-token limit."""
    return batch_error(
        "token_limit_exceeded",
        f"Enqueued token limit reached for {model} in organization {org}. Limit: {limit:,} enqueued tokens. "
        "Please try again once some in_progress batches have been completed.",
    )


def _usage_of(body: dict[str, Any]) -> tuple[int, int, int, int]:
    """(input, output, cached, reasoning) tokens from any endpoint's ``usage`` shape."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    inp = usage.get("input_tokens", usage.get("prompt_tokens", 0)) or 0
    out = usage.get("output_tokens", usage.get("completion_tokens", 0)) or 0
    in_details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
    out_details = usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
    cached = in_details.get("cached_tokens", 0) if isinstance(in_details, dict) else 0
    reasoning = out_details.get("reasoning_tokens", 0) if isinstance(out_details, dict) else 0
    return int(inp), int(out), int(cached or 0), int(reasoning or 0)


@dataclass
class Batch:
    """One batch. Times are on the simulator's clock (``clock.now()``); objects show them as unix seconds."""

    id: str
    org: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    validation: BatchValidation
    config: LongrunConfig
    seed: int
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # processing order: indices into validation.lines
    fail: frozenset[int] = frozenset()  # indices whose line is injected to fail
    done: int = 0  # lines of `order` finished
    outputs: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    usage: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # input, output, cached, reasoning
    output_file_id: str | None = None
    error_file_id: str | None = None
    output_expires_after: float | None = None  # API seconds after creation (None: 30 days after it ends)

    # -- schedule --------------------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self.validation.lines)

    @property
    def expires(self) -> float:
        return self.created + self.config.clock_seconds(self.config.batch_completion_window_seconds)

    def _line_time(self, k: int) -> float:
        """Clock time at which line ``k`` of the processing order finishes."""
        interval = self.config.clock_seconds(1.0 / self.config.batch_lines_per_second)
        return self.times["in_progress"] + (k + 1) * interval

    def next_event(self) -> float | None:
        """When this batch next changes status by itself (None when only a caller can change it)."""
        cfg = self.config
        if self.status == "validating":
            return self.created + cfg.clock_seconds(cfg.batch_validation_seconds)
        if self.status == "in_progress":
            last = self._line_time(self.total - 1) if self.total else self.times["in_progress"]
            return min(last, self.expires)
        if self.status == "finalizing":
            return self.times["finalizing"] + cfg.clock_seconds(cfg.batch_finalizing_seconds)
        if self.status == "cancelling":
            return self.times["cancelling"] + cfg.clock_seconds(cfg.batch_cancelling_seconds)
        return None

    # -- progress --------------------------------------------------------------------------------------------

    def run_lines(self, until: float, host: BatchHost) -> None:
        """Execute every line whose finish time is <= ``until`` (and before a cancel or the expiry)."""
        if self.status != "in_progress":
            return
        stop = min(until, self.expires)
        while self.done < self.total and self._line_time(self.done) <= stop:
            self._run_one(self.order[self.done], host)
            self.done += 1

    def _run_one(self, index: int, host: BatchHost) -> None:
        line = self.validation.lines[index]
        if index in self.fail:
            status, body = 500, server_error()
        else:
            status, body = host.execute(self.endpoint, line.body, self.org, batch=True)
        record = {
            "id": new_id("batch_req", 32),
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": secrets.token_hex(16), "body": body},
            "error": None,
        }
        if 200 <= status < 300:
            self.completed += 1
            self.outputs.append(orjson.dumps(record))
            inp, out, cached, reasoning = _usage_of(body)
            self.usage = [self.usage[0] + inp, self.usage[1] + out, self.usage[2] + cached, self.usage[3] + reasoning]
        else:
            self.failed += 1
            self.error_lines.append(orjson.dumps(record))

    # -- transitions -----------------------------------------------------------------------------------------

    def transition(self, at: float, host: BatchHost, enqueued_elsewhere: Callable[[Batch], int]) -> None:
        """Apply the status change due at ``at`` (== :meth:`next_event`)."""
        if self.status == "validating":
            self._finish_validation(at, host, enqueued_elsewhere)
        elif self.status == "in_progress":
            self.run_lines(at, host)
            if self.done >= self.total:
                self.status = "finalizing"
                self.times["finalizing"] = at
            else:
                self._finish("expired", at, host)
        elif self.status == "finalizing":
            self._finish("completed", at, host)
        elif self.status == "cancelling":
            self._finish("cancelled", at, host)

    def _finish_validation(self, at: float, host: BatchHost, enqueued_elsewhere: Callable[[Batch], int]) -> None:
        v = self.validation
        if not v.ok:
            self.errors = list(v.errors)
            self._fail(at, host)
            return
        model = v.model or ""
        limit = self.config.token_limit_for(model)
        if limit is not None and enqueued_elsewhere(self) + v.enqueued_tokens > limit:
            self.errors = [token_limit_error(model, self.org, limit)]
            self._fail(at, host)
            return
        rng = random.Random(f"{self.config.seed}:{self.seed}")
        self.order = list(range(self.total))
        rng.shuffle(self.order)
        rate = self.config.batch_line_failure_rate
        self.fail = frozenset(i for i in range(self.total) if rate and rng.random() < rate)
        self.status = "in_progress"
        self.times["in_progress"] = at

    def _fail(self, at: float, host: BatchHost) -> None:
        self.status = "failed"
        self.times["failed"] = at
        host.emit("batch.failed", self.id, at)

    def cancel(self, at: float) -> bool:
        """Start cancelling; False when the batch is already past the point where that means anything."""
        if self.status in ("cancelling", "cancelled"):
            return True
        if self.status in TERMINAL_STATUSES:
            return False
        self.status = "cancelling"
        self.times["cancelling"] = at
        return True

    def _finish(self, status: str, at: float, host: BatchHost) -> None:
        if status == "expired":
            for index in self.order[self.done :]:
                line = self.validation.lines[index]
                record = {
                    "id": new_id("batch_req", 32),
                    "custom_id": line.custom_id,
                    "response": None,
                    "error": {"code": "batch_expired", "message": BATCH_EXPIRED_MESSAGE},
                }
                self.error_lines.append(orjson.dumps(record))
                self.failed += 1
        # Output files are deleted 30 days after the batch ends, or output_expires_after seconds after it began.
        after = self.output_expires_after
        expires = (
            self.created + self.config.clock_seconds(after)
            if after
            else at + self.config.clock_seconds(OUTPUT_RETENTION_S)
        )
        if self.outputs:
            self.output_file_id = host.add_file(
                self.org, f"{self.id}_output.jsonl", "batch_output", b"\n".join(self.outputs) + b"\n", at, expires
            )
        if self.error_lines:
            self.error_file_id = host.add_file(
                self.org, f"{self.id}_error.jsonl", "batch_output", b"\n".join(self.error_lines) + b"\n", at, expires
            )
        self.status = status
        self.times[status] = at
        host.emit(f"batch.{status}", self.id, at)

    # -- rendering -------------------------------------------------------------------------------------------

    def to_object(self, stamp: Callable[[float], int]) -> dict[str, Any]:
        """The batch object as ``GET /v1/batches/{id}`` shows it; ``stamp`` turns clock time into unix seconds."""

        def when(name: str) -> int | None:
            t = self.times.get(name)
            return stamp(t) if t is not None else None

        counted = "in_progress" in self.times  # the lines are counted once validation has passed
        inp, out, cached, reasoning = self.usage
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.validation.model,
            "errors": {"object": "list", "data": list(self.errors)} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": stamp(self.created),
            "in_progress_at": when("in_progress"),
            "expires_at": stamp(self.expires),
            "finalizing_at": when("finalizing"),
            "completed_at": when("completed"),
            "failed_at": when("failed"),
            "expired_at": when("expired"),
            "cancelling_at": when("cancelling"),
            "cancelled_at": when("cancelled"),
            "request_counts": {
                "total": self.total if counted else 0,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": inp,
                "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": inp + out,
            },
            "metadata": self.metadata,
        }


class BatchBook:
    """All batches of one simulator, in creation order."""

    def __init__(self) -> None:
        self._batches: dict[str, Batch] = {}
        self._active: dict[str, Batch] = {}  # not yet terminal: the only ones `advance` looks at
        self._seq = 0

    @property
    def pending(self) -> bool:
        """Anything not yet terminal (cheap: checked before every request)."""
        return bool(self._active)

    def create(
        self,
        *,
        org: str,
        endpoint: str,
        input_file_id: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        validation: BatchValidation,
        config: LongrunConfig,
        now: float,
        output_expires_after: float | None = None,
    ) -> Batch:
        self._seq += 1
        batch = Batch(
            id=new_id("batch", 32),
            org=org,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            metadata=metadata,
            created=now,
            validation=validation,
            config=config,
            seed=self._seq,
            output_expires_after=output_expires_after,
        )
        self._batches[batch.id] = self._active[batch.id] = batch
        return batch

    def get(self, org: str, batch_id: str) -> Batch | None:
        batch = self._batches.get(batch_id)
        return batch if batch is not None and batch.org == org else None

    def list(self, org: str) -> list[Batch]:
        return [b for b in self._batches.values() if b.org == org]

    def every(self) -> tuple[Batch, ...]:
        """Every organization's batches (for tests and stats: what the server really holds)."""
        return tuple(self._batches.values())

    def _enqueued_elsewhere(self, batch: Batch) -> int:
        return sum(
            b.validation.enqueued_tokens
            for b in self._batches.values()
            if b is not batch
            and b.org == batch.org
            and b.validation.model == batch.validation.model
            and b.status in _ENQUEUED
        )

    def next_event(self) -> float | None:
        times = [t for b in self._active.values() if (t := b.next_event()) is not None]
        return min(times) if times else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for batch in self._batches.values():
            out[batch.status] = out.get(batch.status, 0) + 1
        return out

    def advance(self, now: float, host: BatchHost) -> None:
        """Bring every batch to ``now``: transitions in time order, then the lines due by ``now``."""
        if not self._active:
            return
        active = [b for b in self._active.values() if b.status in ACTIVE_STATUSES]
        while active:
            due = [(t, b) for b in active if (t := b.next_event()) is not None and t <= now]
            if not due:
                break
            at, batch = min(due, key=lambda item: item[0])
            try:
                batch.transition(at, host, self._enqueued_elsewhere)
            except Exception:
                # A simulator bug must break one batch, never every later request (tick runs before each one).
                log.exception("batch %s failed inside the simulator", batch.id)
                batch.errors = [batch_error("internal_error", "The simulator failed while processing this batch.")]
                batch.status = "failed"
                batch.times["failed"] = at
            active = [b for b in active if b.status in ACTIVE_STATUSES]
        for batch in active:
            try:
                batch.run_lines(now, host)
            except Exception:
                log.exception("batch %s failed inside the simulator", batch.id)
                batch.errors = [batch_error("internal_error", "The simulator failed while processing this batch.")]
                batch.status = "failed"
                batch.times["failed"] = now
        for batch_id in [i for i, b in self._active.items() if b.status in TERMINAL_STATUSES]:
            del self._active[batch_id]
