"""The sans-IO state machine: recorded state -> next action; outcomes of batches and result lines."""

from __future__ import annotations

from typing import Any

import pytest

from ratepilot.batch.machine import (
    Collect,
    Create,
    JobDone,
    PlanRetry,
    ReconcileCreate,
    ReconcileUpload,
    Refresh,
    Upload,
    admits,
    batch_changes,
    line_outcome,
    next_action,
    parse_token_limit,
    unanswered_outcome,
)
from ratepilot.batch.state import LineState, ShardRecord, ShardState

from .conftest import shard_record


def shard(n: int, state: ShardState, model: str = "m", tokens: int = 100) -> ShardRecord:
    return ShardRecord(
        job=1,
        shard=n,
        model=model,
        url="/v1/chat/completions",
        round=0,
        path=f"s{n}",
        n_requests=10,
        n_bytes=1000,
        est_tokens=tokens,
        state=state.value,
    )


def decide(shards: list[ShardRecord], limit: int | None = None, retry: bool = False, accepting: bool = True) -> Any:
    return next_action(shards, token_limit=lambda _m: limit, retry_waiting=retry, accepting=accepting)


def test_intents_are_reconciled_before_anything_else() -> None:
    shards = [shard(0, ShardState.PLANNED), shard(1, ShardState.CREATING), shard(2, ShardState.UPLOADING)]
    assert decide(shards) == ReconcileUpload(2)
    shards[2].state = ShardState.UPLOADED.value
    assert decide(shards) == ReconcileCreate(1)


def test_collect_then_upload_then_create_then_refresh() -> None:
    shards = [shard(0, ShardState.SUBMITTED), shard(1, ShardState.FINISHED), shard(2, ShardState.PLANNED)]
    assert decide(shards) == Collect(1)
    shards[1].state = ShardState.COLLECTED.value
    assert decide(shards) == Upload(2)
    shards[2].state = ShardState.UPLOADED.value
    assert decide(shards) == Create(2)
    shards[2].state = ShardState.SUBMITTED.value
    assert decide(shards) == Refresh((0, 2))


def test_enqueued_token_budget_defers_creates_until_capacity_frees() -> None:
    shards = [shard(0, ShardState.SUBMITTED, tokens=600), shard(1, ShardState.UPLOADED, tokens=600)]
    assert decide(shards, limit=1000) == Refresh((0,))  # 600 + 600 > 1000: wait
    assert decide(shards, limit=1200) == Create(1)
    other = [
        shard(0, ShardState.SUBMITTED, model="a", tokens=900),
        shard(1, ShardState.UPLOADED, model="b", tokens=900),
    ]
    assert decide(other, limit=1000) == Create(1)  # limits are per model
    shards[0].state = ShardState.COLLECTED.value
    assert decide(shards, limit=1000) == Create(1)


def test_a_lone_shard_is_always_admitted() -> None:
    s = shard(0, ShardState.UPLOADED, tokens=5000)
    assert admits([s], s, 1000)


def test_machine_waits_for_capacity_other_jobs_hold() -> None:
    from ratepilot.batch.machine import AwaitCapacity, Create, Refresh, next_action

    def shard(n: int, state: ShardState, model: str = "m") -> ShardRecord:
        return shard_record(shard=n, model=model, est_tokens=60, state=state.value)

    def decide(shards: list[ShardRecord], others: int) -> Any:
        return next_action(
            shards, token_limit=lambda _m: 100, retry_waiting=False, others_pending=lambda m: others if m == "m" else 0
        )

    uploaded = [shard(0, ShardState.UPLOADED)]
    assert decide(uploaded, others=0) == Create(0)
    assert decide(uploaded, others=40) == Create(0)  # 40 + 60 <= 100
    assert decide(uploaded, others=41) == AwaitCapacity(("m",))  # nothing of ours runs: watch the others
    assert decide([*uploaded, shard(1, ShardState.SUBMITTED)], others=0) == Refresh((1,))
    assert decide([shard(0, ShardState.UPLOADED, model="x")], others=1000) == Create(0)  # another model's


def test_retry_round_only_when_everything_is_collected() -> None:
    shards = [shard(0, ShardState.COLLECTED), shard(1, ShardState.SUBMITTED)]
    assert decide(shards, retry=True) == Refresh((1,))
    shards[1].state = ShardState.COLLECTED.value
    assert decide(shards, retry=True) == PlanRetry()
    assert decide(shards, retry=False) == JobDone()


def test_cancelled_job_tracks_and_collects_but_submits_nothing() -> None:
    shards = [shard(0, ShardState.PLANNED), shard(1, ShardState.SUBMITTED), shard(2, ShardState.FINISHED)]
    assert decide(shards, accepting=False) == Collect(2)
    shards[2].state = ShardState.COLLECTED.value
    assert decide(shards, accepting=False) == Refresh((1,))
    shards[1].state = ShardState.COLLECTED.value
    assert decide(shards, accepting=False) == JobDone(blocked=True)


def test_parse_token_limit_from_the_real_message() -> None:
    msg = (
        "Enqueued token limit reached for gpt-4o-mini in organization org-x. Limit: 2,000,000 enqueued tokens. "
        "Please try again once some in_progress batches have been completed."
    )
    assert parse_token_limit(msg) == 2_000_000
    assert parse_token_limit("something else") is None


ERR5 = "server_error"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"response": {"status_code": 200, "body": {}}, "error": None}, (LineState.DONE, None)),
        (
            {"response": {"status_code": 500, "body": {"error": {"type": "server_error"}}}},
            (LineState.RETRY, "server_error"),
        ),
        (
            {"response": {"status_code": 400, "body": {"error": {"code": "invalid_value"}}}},
            (LineState.FAILED, "invalid_value"),
        ),
        ({"response": None, "error": {"code": "batch_expired", "message": "x"}}, (LineState.RETRY, "batch_expired")),
        ({"response": None, "error": {"code": "weird", "message": "x"}}, (LineState.FAILED, "weird")),
    ],
)
def test_line_outcome(line: dict[str, Any], expected: tuple[LineState, str | None]) -> None:
    assert line_outcome(line) == expected


def test_unanswered_lines_by_batch_status() -> None:
    assert unanswered_outcome("expired", None) == (LineState.RETRY, "batch_expired")
    assert unanswered_outcome("cancelled", None) == (LineState.RETRY, "batch_cancelled")
    assert unanswered_outcome("failed", "invalid_json_line") == (LineState.FAILED, "invalid_json_line")


def test_batch_changes_reads_counts_usage_and_first_error() -> None:
    batch = {
        "status": "failed",
        "request_counts": {"total": 3, "completed": 1, "failed": 2},
        "usage": {"input_tokens": 10, "output_tokens": 4},
        "errors": {"data": [{"code": "token_limit_exceeded", "message": "Limit: 5 enqueued tokens"}]},
    }
    changes = batch_changes(batch)
    assert changes["batch_status"] == "failed"
    assert (changes["completed"], changes["failed"], changes["total"]) == (1, 2, 3)
    assert (changes["input_tokens"], changes["output_tokens"]) == (10, 4)
    assert changes["error_code"] == "token_limit_exceeded"
