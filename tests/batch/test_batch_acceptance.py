"""Acceptance gaps of the Batch pipeline: the enqueued-token limit is shared by every job on a model; the ETA is
on the runner's clock; stragglers go through the online engine concurrently; non-retryable line failures are
reported once; result lines match `ratepilot run`'s; CLI details (token limits, hints, help width)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchConfig, BatchRunner, sdk_fallback
from ratepilot.batch.runner import _eta
from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure
from ratepilot.store import ShardRecord, ShardState

from .conftest import API_KEY, chat_line, invoke_batch_cli, read_results, write_jsonl


def _batches(sim: Simulator) -> list[dict[str, Any]]:
    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        return [b.model_dump() for b in client.batches.list(limit=100)]


# ------------------------------------------------------------------------------ 1. shared enqueued-token limit


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
    assert len(_batches(fake_sim)) == 1  # deferred locally: never created (and failed) on the server

    final_b = runner.wait("b")  # watches job a's batch; creates b's once a's has finished
    final_a = runner.wait("a")
    assert final_a.complete and final_b.complete and final_a.done == final_b.done == 8
    batches = _batches(fake_sim)
    assert len(batches) == 2 and all(b["status"] == "completed" for b in batches)
    events = [kind for _, kind, _ in runner.store.events(runner.store.get_job("b"))]  # type: ignore[arg-type]
    assert events.count("capacity-wait") == 1 and "token-limit-deferred" not in events


def test_machine_waits_for_capacity_other_jobs_hold() -> None:
    from ratepilot.batch.machine import AwaitCapacity, Create, Refresh, next_action

    def shard(n: int, state: ShardState, model: str = "m") -> ShardRecord:
        return _shard(shard=n, model=model, est_tokens=60, state=state.value)

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


def test_in_flight_tokens_are_counted_per_api_key(tmp_path: Path) -> None:
    from ratepilot.store import JobRecord, Store

    with Store(tmp_path / "s.sqlite3") as store:
        jobs = {}
        for name, key in (("a", "k1"), ("b", "k1"), ("c", "k2"), ("legacy", "")):
            jobs[name] = store.create_job(JobRecord(name=name, input_path="x", fingerprint="f", key_id=key))
            store.add_shard(_shard(job=jobs[name].id, est_tokens=10, state=ShardState.SUBMITTED.value, batch_id="b"))
        assert store.in_flight_tokens("m", key_id="k1", exclude_job=jobs["a"].id) == 20  # b + legacy (unknown key)
        assert store.in_flight_tokens("m", key_id="k2") == 20  # c + legacy
        assert store.in_flight_tokens("m") == 40  # an unknown key counts every job
        assert {s.job for s in store.submitted_shards("m", key_id="k2")} == {jobs["c"].id, jobs["legacy"].id}
        store.set_token_limit("m", 500, "k1")
        assert store.token_limit("m", "k1") == 500 and store.token_limit("m", "k2") is None


def test_a_database_of_the_previous_version_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from ratepilot.store import Store

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
    with Store(path) as store:
        job = store.get_job("old")
        assert job is not None and job.key_id == ""
        assert store.token_limit("m", "k1") == 700  # learned before keys were recorded: applies to every key


def test_jobs_of_another_api_key_do_not_hold_capacity(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    config = BatchConfig(poll_interval=1.0, token_limits={"gpt-4o-mini": 600})
    runner = make_runner(config=config, longrun=LongrunConfig(enqueued_token_limit=None))
    runner.submit(write_jsonl(tmp_path / "a.jsonl", [chat_line(i, words=20) for i in range(8)]), name="a")
    other_client = OpenAI(base_url=fake_sim.base_url, api_key="sk-test-other-org-1111", max_retries=0)
    state = tmp_path / "state"
    with BatchRunner(other_client, state_dir=state, config=config, clock=fake_sim.clock, close_client=True) as other:
        assert other.key_id != runner.key_id
        b = other.submit(write_jsonl(tmp_path / "b.jsonl", [chat_line(i, words=20) for i in range(8)]), name="b")
    assert b.shards[0].state == ShardState.SUBMITTED  # another organization's limit: not held by job a


# ------------------------------------------------------------------------------ 2. ETA on the runner's clock


def _shard(**kw: Any) -> ShardRecord:
    base: dict[str, Any] = dict(job=1, shard=0, model="m", url="/v1/chat/completions", round=0, path="p")
    base.update(n_requests=100, n_bytes=1, est_tokens=1, state=ShardState.SUBMITTED.value, total=100)
    base.update(kw)
    return ShardRecord(**base)


def test_eta_is_relative_to_now_and_unknown_when_it_cannot_be_known() -> None:
    # 25 of 100 lines in the 50 s between in_progress_at and the last poll: 150 s left at that poll.
    running = _shard(in_progress_at=1000.0, updated_at=1050.0, completed=20, failed=5)
    assert _eta((running,), now=1050.0) == pytest.approx(150.0)
    assert _eta((running,), now=1090.0) == pytest.approx(110.0)  # 40 s later: 40 s less
    assert _eta((running,), now=5000.0) == 0.0  # overdue: not negative
    collected = _shard(shard=1, state=ShardState.COLLECTED.value)
    assert _eta((running, collected), now=1050.0) == pytest.approx(150.0)
    assert _eta((running, _shard(shard=1, state=ShardState.UPLOADED.value)), now=1050.0) is None  # deferred
    assert _eta((_shard(in_progress_at=None, updated_at=1050.0),), now=1050.0) is None  # still validating
    assert _eta((_shard(in_progress_at=1000.0, updated_at=1050.0),), now=1050.0) is None  # no progress yet
    assert _eta((collected,), now=1050.0) is None  # nothing running


def test_status_eta_and_refresh_use_the_fake_clock(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(longrun=LongrunConfig(batch_lines_per_second=1.0, batch_validation_seconds=2.0))
    name = runner.submit(write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(100)]), name="e").name
    assert runner.status(name).eta_seconds is None  # validating: unknown, not a guess
    fake_sim.clock.advance(22.0)  # in progress since t=2: 20 of 100 lines done
    assert runner.status(name).eta_seconds is None  # nothing polled since: the last known state has no rate
    status = runner.refresh(name)
    assert status.shards[0].completed == 20 and status.polled_at == pytest.approx(fake_sim.clock.wall())
    assert status.eta_seconds == pytest.approx(80.0, abs=1.5)
    fake_sim.clock.advance(30.0)
    assert runner.status(name).eta_seconds == pytest.approx(50.0, abs=1.5)  # from the last poll, relative to now


def test_status_cli_says_what_it_shows_and_refresh_retrieves(tmp_path: Path) -> None:
    with Simulator(SimConfig(latency_ms=0)) as sim:
        configure(sim.state, LongrunConfig(time_scale=1.0, batch_lines_per_second=0.5))
        state = tmp_path / "state"
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
        code, out = invoke_batch_cli(sim, state, "submit", str(requests), "--name", "s")
        assert code == 0, out
        calls = sim.stats()["requests"]["by_endpoint"].get("/v1/batches/{id}", 0)
        code, out = invoke_batch_cli(sim, state, "status", "s", env={"OPENAI_API_KEY": ""})
        assert code == 0 and "last known state, batches last polled" in out and "--refresh" in out
        assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches/{id}", 0) == calls  # local only
        code, out = invoke_batch_cli(sim, state, "status", "s", "--refresh")
        assert code == 0 and "retrieved just now" in out, out
        assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches/{id}", 0) == calls + 1


# ------------------------------------------------------------------------------ 3. stragglers online, concurrently


def test_fallback_answers_stragglers_concurrently_in_input_order(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as online:
        post = sdk_fallback(online)
        lock = threading.Lock()
        in_flight = [0, 0, 0]  # now, max, started
        two_at_once = threading.Barrier(2, timeout=10)  # one-at-a-time, the first call would time out here

        def fallback(url: str, body: Any) -> tuple[int, str | None, Any]:
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
                in_flight[2] += 1
                first_two = in_flight[2] <= 2
            try:
                if first_two:
                    two_at_once.wait()
                return post(url, body)
            finally:
                with lock:
                    in_flight[0] -= 1

        runner = make_runner(
            config=BatchConfig(max_attempts=1, poll_interval=1.0),
            longrun=LongrunConfig(batch_line_failure_rate=0.5, seed=3),
            fallback=fallback,
        )
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(100)])
        status = runner.wait(runner.submit(requests, name="fbc").name)
    assert status.complete and status.done == 100
    assert in_flight[1] >= 2 and not two_at_once.broken
    runner.collect("fbc", tmp_path / "out.jsonl")
    results = read_results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(100)]
    assert all(r["response"]["status_code"] == 200 for r in results)


@pytest.fixture
def scaled_sim() -> Iterator[Simulator]:
    """Real clock; the batches run at time scale 500 (seconds of API time in milliseconds)."""
    with Simulator(SimConfig(latency_ms=0)) as s:
        yield s


def test_cli_wait_fallback_online_finishes_fifty_stragglers(tmp_path: Path, scaled_sim: Simulator) -> None:
    # The flag end to end; that the fallback sends concurrently is shown above (a barrier two posts must meet).
    sim = scaled_sim
    configure(sim.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0, batch_line_failure_rate=1.0))
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(50)])
    code, out = invoke_batch_cli(sim, state, "submit", str(requests), "--name", "fo", "--max-attempts", "1")
    assert code == 0, out
    out_file = tmp_path / "out.jsonl"
    code, out = invoke_batch_cli(
        sim, state, "wait", "fo", "--fallback", "online", "--max-attempts", "1", "--poll-interval", "0.01",
        "--timeout", "60", "-o", str(out_file), "--json",
    )  # fmt: skip
    assert code == 0, out
    assert sim.stats()["requests"]["by_endpoint"]["/v1/chat/completions"] == 50  # every line failed in batch
    results = read_results(out_file)
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(50)]
    assert all(r["response"]["status_code"] == 200 for r in results)


# ------------------------------------------------------------------------------ 4. non-retryable line failures


def test_non_retryable_line_failures_are_reported_once_and_not_retried(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_attempts=3, poll_interval=1.0))
    lines = [chat_line(i) for i in range(12)]
    bad = {2, 7, 11}
    for i in bad:
        lines[i]["body"]["temperature"] = 5  # accepted locally; the API answers the line with a 400
    status = runner.wait(runner.submit(write_jsonl(tmp_path / "r.jsonl", lines), name="nr").name)
    assert status.complete and status.done == 9 and status.failed == 3 and status.retry == 0
    assert status.failure_codes == {"decimal_above_max_value": 3}  # the API's code for each line
    assert len(status.shards) == 1 and len(_batches(fake_sim)) == 1  # no retry batch for them
    runner.collect("nr", tmp_path / "out.jsonl")
    results = read_results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(12)]
    for i, r in enumerate(results):
        assert r["response"]["status_code"] == (400 if i in bad else 200)


# ------------------------------------------------------------------------------ 5. small contracts


def test_batch_result_lines_have_the_keys_of_run_result_lines(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    from ratepilot.results import error_result, response_result

    runner = make_runner(config=BatchConfig(poll_interval=1.0))
    runner.wait(runner.submit(write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)]), name="k").name)
    runner.collect("k", tmp_path / "out.jsonl")
    run_keys = set(response_result("x", 200, "r", {}))
    assert run_keys == set(error_result("x", "c", "m"))
    for line in read_results(tmp_path / "out.jsonl"):
        assert set(line) == run_keys and set(line["response"]) == {"status_code", "request_id", "body"}


def test_cli_token_limit_option(tmp_path: Path, fake_sim: Simulator) -> None:
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i, words=20) for i in range(8)])
    code, out = invoke_batch_cli(
        fake_sim, state, "submit", str(requests), "--name", "t", "--max-requests", "4",
        "--token-limit", "gpt-4o-mini=250", "--json",
    )  # fmt: skip
    assert code == 0, out
    shards = json.loads(out.strip().splitlines()[0])["shards"]
    # Planned under the limit, and only one shard at a time fits it: the others wait, uploaded.
    assert all(s["est_tokens"] <= 250 for s in shards) and len(shards) >= 2
    assert [s["state"] for s in shards] == ["submitted"] + ["uploaded"] * (len(shards) - 1)
    code, out = invoke_batch_cli(fake_sim, state, "submit", str(requests), "--token-limit", "gpt-4o-mini")
    assert code == ExitCode.BAD_INPUT and "MODEL=TOKENS" in out


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small"}},
         "body.input"),
        ({"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
          "body": {"model": "text-embedding-3-small", "input": 3}}, "body.input"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": "gpt-3.5-turbo-instruct"}},
         "body.prompt"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions",
          "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": -1}}, "body.max_tokens"),
    ],
)  # fmt: skip
def test_body_errors_of_embeddings_and_completions(
    line: dict[str, Any], field: str, tmp_path: Path, fake_sim: Simulator
) -> None:
    good = {**line, "custom_id": "ok"}
    good["body"] = {"model": line["body"]["model"], ("prompt" if "completions" in line["url"] else "input"): "x"}
    requests = write_jsonl(tmp_path / "r.jsonl", [good, line])
    code, out = invoke_batch_cli(fake_sim, tmp_path / "state", "submit", str(requests))
    assert code == ExitCode.BAD_INPUT and "line 2" in out and field in out, out
    assert fake_sim.stats()["requests"]["by_endpoint"].get("/v1/files", 0) == 0  # nothing uploaded


# ------------------------------------------------------------------------------ 6. CLI UX


def test_money_keeps_three_significant_digits_for_small_jobs() -> None:
    from ratepilot.cli.batch import _money

    assert _money(0.000123456) == "0.000123"
    assert _money(0.00999) == "0.00999"
    assert _money(0.0000012) == "0.00000120"
    assert _money(1.23456) == "1.2346"
    assert _money(0.0) == "0.00"


def test_submit_hints_and_output_only_with_wait(tmp_path: Path, fake_sim: Simulator) -> None:
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(2)])
    code, out = invoke_batch_cli(fake_sim, state, "submit", str(requests), "-o", str(tmp_path / "o.jsonl"))
    assert code == ExitCode.BAD_INPUT and "--wait" in out
    code, out = invoke_batch_cli(fake_sim, state, "submit", str(requests), "--name", "h")
    assert code == 0 and "submitted job: h" in out and "ratepilot batch wait h -o FILE" in out
    code, out = invoke_batch_cli(fake_sim, state, "cancel", "h", "--no-wait")
    assert code == 0 and f"ratepilot batch submit {requests.resolve()} --name h" in out
    assert "ratepilot batch collect h -o FILE" in out


def test_list_jobs_prints_a_header(tmp_path: Path, fake_sim: Simulator) -> None:
    state = tmp_path / "state"
    invoke_batch_cli(fake_sim, state, "submit", str(write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])), "--name", "j")
    code, out = invoke_batch_cli(fake_sim, state, "list", "--jobs")
    assert code == 0 and "local batch jobs" in out
    header = next(line for line in out.splitlines() if "name" in line)
    assert all(col in header for col in ("name", "state", "requests", "input"))


@pytest.mark.parametrize("command", ["submit", "status", "wait", "collect", "cancel", "list", "forget"])
def test_help_fits_eighty_columns(command: str) -> None:
    result = CliRunner().invoke(app, ["batch", command, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output  # no help text cut short


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
