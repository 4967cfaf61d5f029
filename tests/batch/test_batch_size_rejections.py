"""A batch the server refuses as too big (``too_many_tasks``, ``file_too_large``) is split under the limit the
server named and resubmitted, without spending the lines' attempts; one that cannot get smaller fails with the
server's own words in its error lines, and a job whose requests failed does not exit 0."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.batch.machine import parse_size_limit
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import chat_line, invoke_batch_cli, read_results, write_jsonl


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (
            "too_many_tasks",
            "The batch input file contains 12 requests; the maximum is 5 requests per batch.",
            ("max_requests", 5),
        ),
        (
            "too_many_tasks",
            "... the maximum is 50,000 embedding inputs across all requests",
            ("max_embedding_inputs", 50000),
        ),
        ("file_too_large", "The batch input file is larger than the 209715200 byte limit.", ("max_bytes", 209715200)),
        ("file_too_large", "File too large.", None),  # nothing to read: the runner halves the shard instead
        ("too_many_tasks", "", None),
    ],
)
def test_the_servers_limit_is_read_from_its_message(code: str, message: str, expected: tuple[str, int] | None) -> None:
    assert parse_size_limit(code, message) == expected


def test_too_many_tasks_is_split_and_resubmitted_without_spending_attempts(
    tmp_path: Path, make_runner: Callable[..., BatchRunner]
) -> None:
    # A compatible server that takes 4 requests a batch; we plan the Batch API's 50,000. One attempt per line:
    # the refusal must not use it up.
    runner = make_runner(
        config=BatchConfig(max_attempts=1, poll_interval=1.0), longrun=LongrunConfig(batch_max_requests=4)
    )
    lines = [chat_line(i) for i in range(10)]
    runner.submit(write_jsonl(tmp_path / "r.jsonl", lines), name="tasks")
    status = runner.wait("tasks")
    assert status.complete and status.done == 10 and status.failed == 0, status
    refused = [s for s in status.shards if s.error_code == "too_many_tasks"]
    assert len(refused) == 1 and refused[0].n_requests == 10
    retried = [s for s in status.shards if s.round == 1]
    assert sorted(s.n_requests for s in retried) == [2, 4, 4]  # re-packed under the learned limit
    summary = runner.collect("tasks", tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [ln["custom_id"] for ln in lines]
    assert summary.done == 10


def test_file_too_large_is_split_by_bytes(tmp_path: Path, make_runner: Callable[..., BatchRunner]) -> None:
    lines = [chat_line(i) for i in range(8)]
    one = len(json.dumps(lines[0], separators=(",", ":"))) + 1
    runner = make_runner(
        config=BatchConfig(poll_interval=1.0), longrun=LongrunConfig(batch_max_bytes=3 * one + one // 2)
    )
    runner.submit(write_jsonl(tmp_path / "r.jsonl", lines), name="bytes")
    status = runner.wait("bytes")
    assert status.complete and status.done == 8 and status.failed == 0, status
    assert any(s.error_code == "file_too_large" for s in status.shards)
    assert all(s.n_requests <= 3 for s in status.shards if s.round == 1)


def test_a_line_too_big_for_any_batch_fails_with_the_servers_words(tmp_path: Path) -> None:
    # Smaller than one line: splitting cannot help. Each line ends failed, its error line quoting the server.
    # The CLI runs on the real clock: the simulator's batch time runs 500 times faster.
    with Simulator(SimConfig(latency_ms=0)) as sim:
        configure(sim.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0, batch_max_bytes=50))
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
        out = str(tmp_path / "o.jsonl")
        args = ("submit", str(requests), "--name", "huge", "--wait", "-o", out, "--poll-interval", "0.01")
        code, output = invoke_batch_cli(sim, tmp_path / "state", *args)
    assert code == 10, output  # done, but the results are errors: never 0 for a job that did nothing
    assert "3 x file_too_large" in output
    results = read_results(tmp_path / "o.jsonl")
    assert len(results) == 3
    for result in results:
        assert result["error"]["code"] == "file_too_large"
        assert "50 byte limit" in result["error"]["message"]
