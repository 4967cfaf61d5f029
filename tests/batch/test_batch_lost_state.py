"""The local state of a submitted job is lost (``batch.sqlite3`` deleted, another machine): submitting the same
input under the same name adopts the job's batches from the server instead of creating (and paying for) them
again; a plan that does not fit them is refused, not submitted twice."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.batch.runner import JobConflictError
from ratepilot.sim import Simulator
from ratepilot.sim.longrun import LongrunConfig

from .conftest import API_KEY, chat_line, read_results, write_jsonl

LINES = [chat_line(i) for i in range(12)]


def _batches(sim: Simulator) -> list[str]:
    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        return [b.id for b in client.batches.list(limit=100)]


def test_a_lost_state_adopts_the_jobs_batches(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    config = BatchConfig(max_requests=5, poll_interval=1.0)
    requests = write_jsonl(tmp_path / "r.jsonl", LINES)
    first = make_runner(config=config, longrun=LongrunConfig(batch_lines_per_second=0.5))
    first.submit(requests, name="lost")
    created = _batches(fake_sim)
    assert len(created) == 3
    first.close()
    shutil.rmtree(tmp_path / "state")  # the state directory is gone; the batches run on

    second = make_runner(config=config)
    status = second.submit(requests, name="lost")
    assert _batches(fake_sim) == created  # nothing created again
    assert sorted(s.batch_id for s in status.shards if s.batch_id) == sorted(created)
    status = second.wait("lost")
    assert status.complete and status.done == 12
    second.collect("lost", tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [ln["custom_id"] for ln in LINES]
    assert _batches(fake_sim) == created


def test_a_finished_job_whose_inputs_were_deleted_is_adopted_too(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    config = BatchConfig(max_requests=5, poll_interval=1.0)
    requests = write_jsonl(tmp_path / "r.jsonl", LINES)
    first = make_runner(config=config)
    first.run(requests, tmp_path / "first.jsonl", name="done")  # done: its input files are deleted
    created = _batches(fake_sim)
    first.close()
    shutil.rmtree(tmp_path / "state")

    second = make_runner(config=config)
    second.submit(requests, name="done")
    second.wait("done")
    second.collect("done", tmp_path / "again.jsonl")
    assert _batches(fake_sim) == created
    assert read_results(tmp_path / "again.jsonl") == read_results(tmp_path / "first.jsonl")


def test_a_plan_that_does_not_fit_the_lost_batches_is_refused(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", LINES)
    first = make_runner(config=BatchConfig(max_requests=5, poll_interval=1.0))
    first.submit(requests, name="other")
    created = _batches(fake_sim)
    first.close()
    shutil.rmtree(tmp_path / "state")

    second = make_runner(config=BatchConfig(max_requests=4, poll_interval=1.0))
    with pytest.raises(JobConflictError, match="do not match the plan"):
        second.submit(requests, name="other")
    assert _batches(fake_sim) == created
    # Under another name it is a new job, submitted knowingly.
    second.submit(requests, name="other-again")
    assert len(_batches(fake_sim)) == len(created) + 3
