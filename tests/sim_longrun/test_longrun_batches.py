"""The Batch API flows users write, with the official SDK against the simulator (time advanced by FakeClock)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from longrun_helpers import EP, batch_lines, jsonl, upload
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import Simulator
from ratepilot.sim.longrun.batches import token_limit_error


def parse(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def test_upload_create_poll_download_parse(
    client: OpenAI, sim: Simulator, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(
        batch_lines_per_second=10,
        batch_validation_seconds=2,
        batch_finalizing_seconds=2,
        batch_line_failure_rate=0.2,
        seed=7,
    )
    requests = batch_lines(20)
    file_id = upload(client, jsonl(requests))
    batch = client.batches.create(input_file_id=file_id, endpoint=EP, completion_window="24h", metadata={"job": "t1"})
    assert batch.status == "validating"
    assert batch.metadata == {"job": "t1"}
    seen = [batch.status]
    counts = []
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        sim_clock.advance(0.5)
        batch = client.batches.retrieve(batch.id)
        if batch.status != seen[-1]:
            seen.append(batch.status)
        counts.append(batch.request_counts.completed + batch.request_counts.failed if batch.request_counts else 0)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert counts == sorted(counts)  # progress only moves forward
    assert batch.request_counts is not None
    assert batch.request_counts.total == 20
    out = parse(client, batch.output_file_id)
    err = parse(client, batch.error_file_id)
    assert len(out) + len(err) == 20
    assert 0 < len(err) < 20  # injected failures go to the error file
    assert batch.request_counts.failed == len(err)
    assert {r["custom_id"] for r in out + err} == {r["custom_id"] for r in requests}
    assert [r["custom_id"] for r in out] != sorted((r["custom_id"] for r in out), key=lambda c: int(c.split("-")[1]))
    for record in out:
        assert record["id"].startswith("batch_req_")
        assert record["error"] is None
        assert record["response"]["status_code"] == 200
        assert record["response"]["body"]["object"] == "chat.completion"
    for record in err:
        assert record["response"]["status_code"] == 500
        assert record["response"]["body"]["error"]["type"] == "server_error"
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in out)
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
    output_file = client.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output"
    assert batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.created_at <= batch.in_progress_at <= batch.completed_at
    longrun_stats = sim.stats()["longrun"]
    assert longrun_stats["batches"] == {"completed": 1}
    assert longrun_stats["files"] == 3  # input, output, error


def wait_terminal(client: OpenAI, clock: FakeClock, batch_id: str, step: float = 1.0, limit: int = 10_000) -> Any:
    for _ in range(limit):
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        clock.advance(step)
    raise AssertionError("batch never finished")


def test_cancel_keeps_partial_results(client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]) -> None:
    longrun(batch_lines_per_second=1, batch_validation_seconds=1, batch_cancelling_seconds=5)
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(10))), endpoint=EP, completion_window="24h"
    )
    sim_clock.advance(1 + 4.5)  # validation, then 4 lines done
    batch = client.batches.cancel(batch.id)
    assert batch.status == "cancelling"
    assert batch.cancelling_at is not None
    sim_clock.advance(2)
    assert client.batches.retrieve(batch.id).status == "cancelling"
    sim_clock.advance(3)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (10, 4)
    assert len(parse(client, batch.output_file_id)) == 4
    assert batch.error_file_id is None
    # cancelling twice is harmless; cancelling a finished batch is a 400
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_expiry_keeps_finished_lines_and_marks_the_rest(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    # a "24h" window of 10 API seconds at time_scale 1; 1 line/s: 8 of 20 lines finish before expiry
    longrun(batch_lines_per_second=1, batch_validation_seconds=2, batch_completion_window_seconds=10)
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(20))), endpoint=EP, completion_window="24h"
    )
    sim_clock.advance(9.5)
    assert client.batches.retrieve(batch.id).status == "in_progress"
    sim_clock.advance(1)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "expired"
    assert batch.expired_at == batch.expires_at
    out, err = parse(client, batch.output_file_id), parse(client, batch.error_file_id)
    assert len(out) == 8
    assert len(err) == 12
    assert all(r["response"] is None and r["error"]["code"] == "batch_expired" for r in err)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (8, 12)


def test_time_scale_makes_a_day_pass_in_seconds(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(time_scale=86_400 / 2, batch_lines_per_second=0.00002)  # 24 h window = 2 clock seconds; 1 line in 50,000 s
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(3))), endpoint=EP, completion_window="24h"
    )
    assert batch.expires_at - batch.created_at == 2
    sim_clock.advance(2)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "expired"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)


def test_all_lines_failed_still_completes_without_output_file(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(batch_line_failure_rate=1.0, batch_lines_per_second=100)
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(5))), endpoint=EP, completion_window="24h"
    )
    batch = wait_terminal(client, sim_clock, batch.id)
    assert batch.status == "completed"
    assert batch.output_file_id is None
    assert len(parse(client, batch.error_file_id)) == 5


def test_unknown_model_lines_go_to_the_error_file(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(batch_lines_per_second=100)
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(2, model="gpt-nope"))), endpoint=EP, completion_window="24h"
    )
    batch = wait_terminal(client, sim_clock, batch.id)
    err = parse(client, batch.error_file_id)
    assert [r["response"]["status_code"] for r in err] == [404, 404]
    assert err[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_enqueued_token_limit_fails_the_later_batch(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any], sim: Simulator
) -> None:
    longrun(enqueued_token_limit=60, batch_lines_per_second=0.01)  # each file: 45 prompt tokens
    first = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(5))), endpoint=EP, completion_window="24h"
    )
    second = client.batches.create(
        input_file_id=upload(client, jsonl(batch_lines(5, prefix="b"))), endpoint=EP, completion_window="24h"
    )
    assert second.status == "validating"  # create succeeds
    sim_clock.advance(5)
    first = client.batches.retrieve(first.id)
    second = client.batches.retrieve(second.id)
    assert first.status == "in_progress"
    assert second.status == "failed"
    assert second.failed_at is not None
    assert second.errors is not None and second.errors.data is not None
    org = client.batches.with_raw_response.retrieve(second.id).headers["openai-organization"]
    assert [e.model_dump() for e in second.errors.data] == [
        {
            "code": "token_limit_exceeded",
            "line": None,
            "message": f"Enqueued token limit reached for gpt-4o-mini in organization {org}. Limit: 60 enqueued "
            "tokens. Please try again once some in_progress batches have been completed.",
            "param": None,
        }
    ]


def test_token_limit_error_is_the_documented_text() -> None:
    assert token_limit_error("gpt-4o-mini", "org-abc", 2_000_000) == {
        "code": "token_limit_exceeded",
        "line": None,
        "message": "Enqueued token limit reached for gpt-4o-mini in organization org-abc. Limit: 2,000,000 enqueued "
        "tokens. Please try again once some in_progress batches have been completed.",
        "param": None,
    }


def test_list_pagination(client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    file_id = upload(client, jsonl(batch_lines(1)))
    ids = [client.batches.create(input_file_id=file_id, endpoint=EP, completion_window="24h").id for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]  # newest first
    assert page.has_more is True
    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[4], ids[3], True)
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-pagination follows `after`
    last = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]]
    assert last.has_more is False


def test_malformed_files_fail_with_errors_and_line_numbers(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(batch_max_requests=3)
    good = batch_lines(2)
    cases: list[tuple[list[Any], list[tuple[str, int | None]]]] = [
        ([good[0], "{broken"], [("invalid_json_line", 2)]),
        ([good[0], good[0]], [("duplicate_custom_id", 2)]),
        ([good[0], {**good[1], "method": "GET"}], [("invalid_method", 2)]),
        ([{**good[0], "url": "/v1/embeddings"}, good[1]], [("url_mismatch", 1)]),
        ([good[0], {**good[1], "body": {**good[1]["body"], "model": "gpt-4o"}}], [("model_mismatch", 2)]),
        (batch_lines(4), [("too_many_tasks", None)]),
        ([], [("empty_file", None)]),
        ([good[0], {k: v for k, v in good[1].items() if k != "custom_id"}], [("missing_required_parameter", 2)]),
        (["[]", good[1], good[1]], [("invalid_json_line", 1), ("duplicate_custom_id", 3)]),
    ]
    batches = [
        client.batches.create(input_file_id=upload(client, jsonl(lines)), endpoint=EP, completion_window="24h").id
        for lines, _ in cases
    ]
    sim_clock.advance(10)
    for batch_id, (_, expected) in zip(batches, cases, strict=True):
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "failed"
        assert batch.output_file_id is None and batch.error_file_id is None
        assert batch.errors is not None and batch.errors.object == "list" and batch.errors.data is not None
        assert [(e.code, e.line) for e in batch.errors.data] == expected
        assert all(e.message for e in batch.errors.data)


def test_embeddings_and_responses_batches_use_the_sync_responders(
    client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(batch_lines_per_second=100)
    emb = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": [f"text {i}", "more"], "dimensions": 8},
        }
        for i in range(3)
    ]
    resp = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": f"q{i}"},
        }
        for i in range(3)
    ]
    b1 = client.batches.create(
        input_file_id=upload(client, jsonl(emb)), endpoint="/v1/embeddings", completion_window="24h"
    )
    b2 = client.batches.create(
        input_file_id=upload(client, jsonl(resp)), endpoint="/v1/responses", completion_window="24h"
    )
    b1, b2 = wait_terminal(client, sim_clock, b1.id), wait_terminal(client, sim_clock, b2.id)
    vectors = [r["response"]["body"]["data"] for r in parse(client, b1.output_file_id)]
    assert [len(v) for v in vectors] == [2, 2, 2] and len(vectors[0][0]["embedding"]) == 8
    answers = {
        r["custom_id"]: r["response"]["body"]["output"][0]["content"][0]["text"]
        for r in parse(client, b2.output_file_id)
    }
    assert answers == {"r0": "q0", "r1": "q1", "r2": "q2"}
    assert b2.usage is not None and b2.usage.output_tokens > 0
