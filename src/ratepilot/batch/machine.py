"""The sans-IO core of the Batch pipeline: given the recorded state, what is the next action?

No sockets, files or clocks here. The driver (:mod:`ratepilot.batch.runner`) records an intent, performs the
action this module chose, records the outcome, and asks again. Because the decision depends only on recorded
state, the same function resumes a job after ``kill -9``: a shard left in an intent state (``uploading``,
``creating``) is *reconciled* against the server before anything is created again.

Also pure and here: what a batch object means for its shard (:func:`batch_changes`), what a result line means
for its request (:func:`line_outcome`), and the enqueued-token admission rule (:func:`admits`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import classify
from .state import LineState, ShardRecord, ShardState

__all__ = [
    "ACTIVE_BATCH_STATUSES",
    "RETRYABLE_LINE_CODES",
    "SIZE_REJECTIONS",
    "TERMINAL_BATCH_STATUSES",
    "Action",
    "AwaitCapacity",
    "Collect",
    "Create",
    "JobDone",
    "PlanRetry",
    "ReconcileCreate",
    "ReconcileUpload",
    "Refresh",
    "Upload",
    "admits",
    "batch_changes",
    "line_outcome",
    "next_action",
    "parse_size_limit",
    "parse_token_limit",
    "pending_tokens",
    "unanswered_outcome",
]

TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
ACTIVE_BATCH_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})

RETRYABLE_LINE_CODES = frozenset(
    {"batch_expired", "batch_cancelled", "server_error", "internal_error", "timeout", "rate_limit_exceeded"}
)
"""Error codes of result lines (with no HTTP response) worth another submission."""


@dataclass(frozen=True, slots=True)
class ReconcileUpload:
    """An upload intent without a file id: find the file on the server (by name) or upload again."""

    shard: int


@dataclass(frozen=True, slots=True)
class Upload:
    shard: int


@dataclass(frozen=True, slots=True)
class ReconcileCreate:
    """A create intent without a batch id: find the batch by its metadata, or create it."""

    shard: int


@dataclass(frozen=True, slots=True)
class Create:
    shard: int


@dataclass(frozen=True, slots=True)
class Collect:
    """The shard's batch is terminal: download its output and error files and index every line."""

    shard: int


@dataclass(frozen=True, slots=True)
class Refresh:
    """Nothing to do but wait: poll these submitted shards."""

    shards: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AwaitCapacity:
    """Uploaded shards wait for enqueued-token capacity that only *other* jobs' batches hold (this job has
    nothing running whose end would free it): watch those batches, then decide again."""

    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlanRetry:
    """Every shard is collected and some lines failed retryably: put them in new shards."""


@dataclass(frozen=True, slots=True)
class JobDone:
    """Nothing left to do (``blocked``: uploaded shards remain but the job no longer accepts submissions)."""

    blocked: bool = False


Action = ReconcileUpload | Upload | ReconcileCreate | Create | Collect | Refresh | AwaitCapacity | PlanRetry | JobDone


def _no_others(model: str) -> int:
    return 0


def pending_tokens(shards: Sequence[ShardRecord], model: str) -> int:
    """Estimated enqueued tokens of this job's batches for ``model`` that the server still counts."""
    return sum(
        s.est_tokens for s in shards if s.model == model and s.state in (ShardState.CREATING, ShardState.SUBMITTED)
    )


def admits(shards: Sequence[ShardRecord], shard: ShardRecord, limit: int | None, others: int = 0) -> bool:
    """May ``shard`` be created now without exceeding the model's enqueued-token limit?

    The limit is per organization and model, so ``others`` (the other jobs' pending tokens for the model)
    counts too. With nothing pending for the model at all it is always admitted (waiting could never help,
    and the planner keeps shards under a known limit).
    """
    if limit is None:
        return True
    pending = pending_tokens(shards, shard.model) + others
    return pending == 0 or pending + shard.est_tokens <= limit


def next_action(
    shards: Sequence[ShardRecord],
    *,
    token_limit: Callable[[str], int | None],
    retry_waiting: bool,
    accepting: bool = True,
    others_pending: Callable[[str], int] = _no_others,
) -> Action:
    """The next step for a job whose shards are ``shards`` (in shard order).

    Reconciliation of intents comes first, then collecting finished batches (frees capacity and results),
    then uploads, then creates that the token budget admits, then polling. ``accepting=False`` (a cancelled
    job) stops new uploads, creates and retry rounds but still tracks and collects what is on the server.
    ``others_pending(model)``: enqueued tokens of other jobs' running batches for the model (same limit).
    """
    by_state: dict[str, list[ShardRecord]] = {}
    for s in shards:
        by_state.setdefault(s.state, []).append(s)
    if by_state.get(ShardState.UPLOADING):
        return ReconcileUpload(by_state[ShardState.UPLOADING][0].shard)
    if by_state.get(ShardState.CREATING):
        return ReconcileCreate(by_state[ShardState.CREATING][0].shard)
    if by_state.get(ShardState.FINISHED):
        return Collect(by_state[ShardState.FINISHED][0].shard)
    if accepting:
        if by_state.get(ShardState.PLANNED):
            return Upload(by_state[ShardState.PLANNED][0].shard)
        for s in by_state.get(ShardState.UPLOADED, []):
            if admits(shards, s, token_limit(s.model), others_pending(s.model)):
                return Create(s.shard)
    submitted = by_state.get(ShardState.SUBMITTED, [])
    if submitted:
        return Refresh(tuple(s.shard for s in submitted))
    if accepting and by_state.get(ShardState.UPLOADED):
        # Not admitted with nothing of ours running: other jobs' batches hold the capacity.
        return AwaitCapacity(tuple(dict.fromkeys(s.model for s in by_state[ShardState.UPLOADED])))
    waiting = bool(by_state.get(ShardState.PLANNED) or by_state.get(ShardState.UPLOADED))
    if not accepting:
        return JobDone(blocked=waiting or retry_waiting)
    if retry_waiting:
        return PlanRetry()
    return JobDone()


_LIMIT = re.compile(r"Limit:\s*([\d,_]+)\s*enqueued tokens", re.IGNORECASE)


def parse_token_limit(message: str) -> int | None:
    """The limit from a ``token_limit_exceeded`` message ("... Limit: 2,000,000 enqueued tokens. ...")."""
    match = _LIMIT.search(message or "")
    if not match:
        return None
    digits = re.sub(r"[,_]", "", match.group(1))
    return int(digits) if digits else None


SIZE_REJECTIONS = frozenset({"too_many_tasks", "file_too_large"})
"""Batch errors that say the file is too big for the server (not that a request is bad): split it and resubmit."""

_SIZE_LIMITS = (
    # (what the limit bounds, the BatchConfig field, the pattern of the server's message)
    ("embedding inputs", "max_embedding_inputs", re.compile(r"maximum is\s*([\d,_]+)\s*embedding inputs", re.I)),
    ("requests", "max_requests", re.compile(r"maximum is\s*([\d,_]+)\s*requests", re.I)),
    ("bytes", "max_bytes", re.compile(r"([\d,_]+)\s*(?:byte|bytes)\b", re.I)),
)


def parse_size_limit(code: str, message: str) -> tuple[str, int] | None:
    """``(BatchConfig field, limit)`` from a ``too_many_tasks`` / ``file_too_large`` message, or ``None`` when
    the message names no number we understand (the caller then halves the shard).

    The wording is OpenAI's as users reported it ("... the maximum is 50000 requests per batch", "larger than
    the 209715200 byte limit"); unconfirmed, hence the fallback.
    """
    for _what, field, pattern in _SIZE_LIMITS:
        if field == "max_bytes" and code != "file_too_large":
            continue
        match = pattern.search(message or "")
        if match:
            digits = re.sub(r"[,_]", "", match.group(1))
            if digits and int(digits) > 0:
                return field, int(digits)
    return None


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def batch_changes(batch: Any) -> dict[str, Any]:
    """Shard fields that a batch object (SDK model or dict) says: status, counts, files, usage, first error."""
    counts = _get(batch, "request_counts")
    usage = _get(batch, "usage")
    changes: dict[str, Any] = {
        "batch_status": _get(batch, "status"),
        "output_file_id": _get(batch, "output_file_id"),
        "error_file_id": _get(batch, "error_file_id"),
        "in_progress_at": _get(batch, "in_progress_at"),
    }
    if counts is not None:
        changes.update(
            completed=int(_get(counts, "completed") or 0),
            failed=int(_get(counts, "failed") or 0),
            total=int(_get(counts, "total") or 0),
        )
    if usage is not None:
        changes.update(
            input_tokens=int(_get(usage, "input_tokens") or 0),
            output_tokens=int(_get(usage, "output_tokens") or 0),
        )
    errors = _get(batch, "errors")
    data = _get(errors, "data") if errors is not None else None
    if data:
        first = data[0]
        changes.update(error_code=_get(first, "code"), error_message=_get(first, "message"))
    return changes


def line_outcome(line: Mapping[str, Any]) -> tuple[LineState, str | None]:
    """What a result line means for its request: done, failed for good, or worth another submission."""
    response = line.get("response")
    if isinstance(response, Mapping):
        status = response.get("status_code")
        if isinstance(status, int) and 200 <= status < 300:
            return LineState.DONE, None
        status = status if isinstance(status, int) else 500
        info = classify(status, response.get("body"))
        code = info.code or info.type or str(status)
        return (LineState.RETRY if info.retryable else LineState.FAILED), code
    error = line.get("error")
    code = str(error.get("code") or "unknown") if isinstance(error, Mapping) else "unknown"
    return (LineState.RETRY if code in RETRYABLE_LINE_CODES else LineState.FAILED), code


def unanswered_outcome(batch_status: str | None, error_code: str | None) -> tuple[LineState, str]:
    """Lines a terminal batch gave no result line for: retry unless the batch itself was rejected."""
    if batch_status == "expired":
        return LineState.RETRY, "batch_expired"
    if batch_status == "cancelled":
        return LineState.RETRY, "batch_cancelled"
    if batch_status == "failed":
        return LineState.FAILED, error_code or "batch_failed"
    return LineState.RETRY, "missing_result"
