"""The enqueued-token limit is shared: every job on a model counts against it (a job whose shard does not fit
waits, uploaded, for capacity another job holds), per API key (another organization's jobs hold none), and a
database from before keys were recorded is migrated (its learned limits apply to every key)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from openai import OpenAI

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.batch.state import ShardState
from ratepilot.sim import Simulator
from ratepilot.sim.longrun import LongrunConfig

from .conftest import chat_line, server_batches, shard_record, write_jsonl


def _two_jobs_over_the_limit(tmp_path: Path, make_runner: Callable[..., BatchRunner]) -> tuple[BatchRunner, Any, Any]:
    """Jobs "a" and "b" submitted on one model: each one's single shard fits the enqueued-token limit alone,
    together they do not (for us and for the server)."""
    limit = 600
    runner = make_runner(
        config=BatchConfig(poll_interval=1.0, token_limits={"gpt-4o-mini": limit}),
        longrun=LongrunConfig(enqueued_token_limit=limit, batch_lines_per_second=1.0),
    )
    a = runner.submit(write_jsonl(tmp_path / "a.jsonl", [chat_line(i, words=20) for i in range(8)]), name="a")
    b = runner.submit(write_jsonl(tmp_path / "b.jsonl", [chat_line(i, words=20) for i in range(8)]), name="b")
    assert a.shards[0].est_tokens < limit and a.shards[0].est_tokens + b.shards[0].est_tokens > limit
    return runner, a, b


def test_the_token_limit_is_shared_by_every_job_on_the_model(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner, a, b = _two_jobs_over_the_limit(tmp_path, make_runner)
    assert a.shards[0].state == ShardState.SUBMITTED
    assert b.shards[0].state == ShardState.UPLOADED and b.shards[0].error_code == "capacity_wait"
    assert len(server_batches(fake_sim)) == 1  # deferred locally: never created (and failed) on the server

    final_b = runner.wait("b")  # watches job a's batch; creates b's once a's has finished
    final_a = runner.wait("a")
    assert final_a.complete and final_b.complete and final_a.done == final_b.done == 8
    batches = server_batches(fake_sim)
    assert len(batches) == 2 and all(b["status"] == "completed" for b in batches)
    events = [kind for _, kind, _ in runner.store.events(runner.store.get_job("b"))]  # type: ignore[arg-type]
    assert events.count("capacity-wait") == 1 and "token-limit-deferred" not in events


def test_jobs_of_another_api_key_do_not_hold_capacity(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    config = BatchConfig(poll_interval=1.0, token_limits={"gpt-4o-mini": 600})
    runner = make_runner(config=config, longrun=LongrunConfig(enqueued_token_limit=None))
    runner.submit(write_jsonl(tmp_path / "a.jsonl", [chat_line(i, words=20) for i in range(8)]), name="a")
    other_client = OpenAI(base_url=fake_sim.base_url, api_key="test-key-other-org-1111", max_retries=0)
    state = tmp_path / "state"
    with BatchRunner(other_client, state_dir=state, config=config, clock=fake_sim.clock, close_client=True) as other:
        assert other.key_id != runner.key_id
        b = other.submit(write_jsonl(tmp_path / "b.jsonl", [chat_line(i, words=20) for i in range(8)]), name="b")
    assert b.shards[0].state == ShardState.SUBMITTED  # another organization's limit: not held by job a


def test_another_jobs_missing_batch_does_not_fail_this_jobs_wait(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner, a, _ = _two_jobs_over_the_limit(tmp_path, make_runner)
    runner.store.update_shard(a.shards[0], batch_id="batch_gone")  # e.g. made with another project's key
    status = runner.wait("b", timeout=5.0)  # keeps waiting for the capacity job a holds; does not raise
    assert not status.complete
    job_a = runner.store.get_job("a")
    assert job_a is not None
    assert any(kind == "capacity-check-failed" and "404" in detail for _, kind, detail in runner.store.events(job_a))


def test_in_flight_tokens_are_counted_per_api_key(tmp_path: Path) -> None:
    from ratepilot.batch.state import BatchState, JobRecord

    with BatchState(tmp_path / "s.sqlite3") as store:
        jobs = {}
        for name, key in (("a", "k1"), ("b", "k1"), ("c", "k2"), ("legacy", "")):
            jobs[name] = store.create_job(JobRecord(name=name, input_path="x", fingerprint="f", key_id=key))
            store.add_shard(
                shard_record(job=jobs[name].id, est_tokens=10, state=ShardState.SUBMITTED.value, batch_id="b")
            )
        assert store.in_flight_tokens("m", key_id="k1", exclude_job=jobs["a"].id) == 20  # b + legacy (unknown key)
        assert store.in_flight_tokens("m", key_id="k2") == 20  # c + legacy
        assert store.in_flight_tokens("m") == 40  # an unknown key counts every job
        assert {s.job for s in store.submitted_shards("m", key_id="k2")} == {jobs["c"].id, jobs["legacy"].id}
        store.set_token_limit("m", 500, "k1")
        assert store.token_limit("m", "k1") == 500 and store.token_limit("m", "k2") is None


def test_a_database_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from ratepilot.batch.state import BatchState

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the tables as the previous version created them
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, input_path TEXT NOT NULL, "
            "fingerprint TEXT NOT NULL, nonce TEXT NOT NULL DEFAULT '', url TEXT NOT NULL DEFAULT '', "
            "total INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, config TEXT NOT NULL DEFAULT '{}', "
            "created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO jobs (name, input_path, fingerprint, state, created_at, updated_at) "
                   "VALUES ('old', 'x', 'f', 'active', 0, 0)")  # fmt: skip
        db.execute("CREATE TABLE token_limits (model TEXT PRIMARY KEY, tokens INTEGER NOT NULL, learned_at REAL)")
        db.execute("INSERT INTO token_limits VALUES ('m', 700, 0)")
    db.close()
    with BatchState(path) as store:
        job = store.get_job("old")
        assert job is not None and job.key_id == ""
        assert store.token_limit("m", "k1") == 700  # learned before keys were recorded: applies to every key
