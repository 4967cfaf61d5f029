"""The Batch API's newer rules (``openai-behaviour.md`` §8): output files expire (``output_expires_after``, sent by
default), and at most 2,000 batches may be created per hour (the submitter waits for a slot)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import NotFoundError, OpenAI

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.sim import Simulator

from .conftest import API_KEY, chat_line, invoke_batch_cli, write_jsonl


def test_outputs_expire_when_asked_and_the_runner_asks_for_the_longest(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(poll_interval=1.0, output_expires_after=3_600))
    runner.submit(write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)]), name="exp")
    status = runner.wait("exp")
    assert status.complete
    shard = status.shards[0]
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as client:
        batch = client.batches.retrieve(str(shard.batch_id))
        assert batch.output_file_id is not None
        output = client.files.retrieve(batch.output_file_id)
        assert output.expires_at == batch.created_at + 3_600
        fake_sim.clock.advance(3_601)
        with pytest.raises(NotFoundError):  # deleted by the server: results not collected by then are lost
            client.files.content(batch.output_file_id)
    assert BatchConfig().output_expires_after == 30 * 86_400  # the default: the longest the API allows
    with pytest.raises(ValueError, match="output_expires_after"):
        BatchConfig(output_expires_after=60)


def test_batch_creations_wait_for_a_slot_under_the_hourly_limit(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_requests=1, poll_interval=60.0, max_creations_per_hour=2))
    runner.submit(write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(5)]), name="hourly")
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as client:
        assert len(list(client.batches.list())) == 2  # submit does not wait: the rest are created by `wait`
        status = runner.wait("hourly")
        created = sorted(b.created_at for b in client.batches.list())
    assert status.complete and status.done == 5
    assert len(created) == 5
    for i in range(2, 5):  # never more than 2 in any hour
        assert created[i] - created[i - 2] >= 3_600


def test_batch_list_filters_by_status_and_job_on_the_client(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_requests=2, poll_interval=1.0))
    runner.run(write_jsonl(tmp_path / "a.jsonl", [chat_line(i) for i in range(4)]), tmp_path / "a-out.jsonl", name="a")
    runner.submit(write_jsonl(tmp_path / "b.jsonl", [chat_line(i) for i in range(10, 12)]), name="b")
    state = tmp_path / "state"
    code, out = invoke_batch_cli(fake_sim, state, "list", "--job", "a", "--status", "completed", "--json")
    assert code == 0, out
    rows = json.loads(out)["data"]
    assert len(rows) == 2 and {r["job"] for r in rows} == {"a"} and {r["status"] for r in rows} == {"completed"}
    code, out = invoke_batch_cli(fake_sim, state, "list", "--status", "validating", "--json")
    assert [r["job"] for r in json.loads(out)["data"]] == ["b"]
