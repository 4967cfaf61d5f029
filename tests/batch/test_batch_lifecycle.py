"""A batch job's life: cancel keeps partial results and resumes; retries run out into reported failures, and
failures the API will not change are not retried; polling is budgeted and a failed poll is a missed poll;
webhooks replace polling and wake a timed wait; collect writes what is answered, in `ratepilot run`'s line
format; the uploaded inputs are deleted once the job is done unless the job keeps its files; large files are
validated in parallel with the same line numbers. (The online fallback: test_batch_fallback.py.)"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchConfig, BatchInputError, BatchRunner
from ratepilot.batch import prepare as prepare_mod
from ratepilot.cli import app
from ratepilot.errors import RetriesExhausted
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import (
    API_KEY,
    chat_line,
    endpoint_calls,
    invoke_batch_cli,
    read_results,
    server_batches,
    webhook_job,
    write_jsonl,
)


def test_cancel_keeps_partial_results_and_submit_resumes(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(
        config=BatchConfig(max_requests=10, poll_interval=1.0),
        longrun=LongrunConfig(batch_lines_per_second=1.0, seed=2),
    )
    lines = [chat_line(i) for i in range(20)]
    requests = write_jsonl(tmp_path / "r.jsonl", lines)
    runner.submit(requests, name="c")
    fake_sim.clock.advance(7.0)  # validation (2 s) + about 5 lines of each batch done
    status = runner.cancel("c")
    assert status.state == "cancelled"
    assert all(s.batch_status == "cancelled" for s in status.shards)
    assert 0 < status.done < 20 and status.retry == 20 - status.done and status.pending == 0

    partial = runner.collect("c", tmp_path / "out.jsonl")
    assert not partial.complete and partial.written == status.done and partial.missing == 20 - status.done
    got = [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")]
    assert got == sorted(got) and len(got) == status.done  # partial, but in input order

    runner.submit(requests, name="c")  # the same input again: resume what did not finish
    final = runner.wait("c")
    assert final.complete and final.done == 20
    summary = runner.collect("c", tmp_path / "out.jsonl")
    assert summary.complete
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [ln["custom_id"] for ln in lines]


def test_out_of_attempts_failures_are_reported_with_their_error_line(
    tmp_path: Path, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(
        config=BatchConfig(max_attempts=1, poll_interval=1.0),
        longrun=LongrunConfig(batch_line_failure_rate=0.4, seed=11),
    )
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(20)])
    status = runner.wait(runner.submit(requests, name="f").name)
    assert status.complete and status.failed > 0 and status.done + status.failed == 20
    assert status.failure_codes == {"server_error": status.failed}
    runner.collect("f", tmp_path / "out.jsonl")
    results = read_results(tmp_path / "out.jsonl")
    assert len(results) == 20
    assert sum(r["response"]["status_code"] == 500 for r in results) == status.failed


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
    assert len(status.shards) == 1 and len(server_batches(fake_sim)) == 1  # no retry batch for them
    runner.collect("nr", tmp_path / "out.jsonl")
    results = read_results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(12)]
    for i, r in enumerate(results):
        assert r["response"]["status_code"] == (400 if i in bad else 200)


def test_adaptive_polling_is_budgeted(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(), longrun=LongrunConfig(batch_lines_per_second=0.02))  # ~17 min
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(20)])
    status = runner.wait(runner.submit(requests, name="slow").name)
    assert status.complete
    assert endpoint_calls(fake_sim, "/v1/batches/{id}") <= 15


@pytest.mark.parametrize("poll_interval", [1.0, None], ids=["fixed", "adaptive"])
def test_failed_polls_are_missed_polls_with_back_off(
    poll_interval: float | None, tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(poll_interval=poll_interval))
    batches = runner.client.batches
    real = batches.retrieve
    failures: list[float] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if len(failures) < 4:  # under PollPolicy.max_failures (5): a blip, not an outage
            failures.append(fake_sim.clock.now())
            if len(failures) % 2:
                raise openai.APIConnectionError(request=httpx2.Request("GET", "http://127.0.0.1/v1/batches/x"))
            raise RetriesExhausted(attempts=3, reason="max attempts", last_status=503)
        return real(*args, **kwargs)

    batches.retrieve = flaky  # type: ignore[method-assign]
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(5)])
    status = runner.wait(runner.submit(requests, name="p").name)
    assert status.complete and status.done == 5 and len(failures) == 4
    gaps = [b - a for a, b in itertools.pairwise(failures)]
    assert all(g > 0 for g in gaps)  # backed off (fake clock): never a hot loop


def test_persistent_poll_failures_are_raised(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner()
    batches = runner.client.batches

    def down(*args: Any, **kwargs: Any) -> Any:
        raise openai.APIConnectionError(request=httpx2.Request("GET", "http://127.0.0.1/v1/batches/x"))

    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
    name = runner.submit(requests, name="down").name
    batches.retrieve = down  # type: ignore[method-assign]
    with pytest.raises(openai.APIConnectionError):
        runner.wait(name)


def test_token_limit_too_small_for_a_shard_resplits_it(
    tmp_path: Path, make_runner: Callable[..., BatchRunner], fake_sim: Simulator
) -> None:
    # The server's limit is below one shard's tokens: learn it, re-pack the lines under it, finish.
    runner = make_runner(
        config=BatchConfig(max_requests=20, max_attempts=3, poll_interval=1.0, token_estimate="exact"),
        longrun=LongrunConfig(enqueued_token_limit=120),
    )
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(12)])
    status = runner.wait(runner.submit(requests, name="split").name)
    assert status.complete and status.done == 12
    assert len(status.shards) > 2 and all(s.est_tokens <= 120 for s in status.shards if s.round > 0)


def test_parallel_validation_keeps_line_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_mod, "CHUNK_BYTES", 2048)  # many chunks from a small file
    bodies = [
        orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}) + b"\n"
        for i in range(120)
    ]
    good = write_jsonl(tmp_path / "good.jsonl", bodies)
    bad = write_jsonl(tmp_path / "bad.jsonl", [*bodies[:97], b"{oops\n", *bodies[98:]])
    with OpenAI(base_url="http://127.0.0.1:9/v1", api_key=API_KEY) as client:
        cfg = BatchConfig(parse_workers=2)
        with BatchRunner(client, state_dir=tmp_path / "s", config=cfg) as runner:
            job = runner.prepare(good, name="par")
            shard = runner.store.shards(job)[0]
            ids = [orjson.loads(raw)["custom_id"] for raw in Path(shard.path).read_bytes().splitlines()]
            assert ids == [f"line-{i}" for i in range(1, 121)]  # global line numbers across chunks
            with pytest.raises(BatchInputError) as err:
                runner.prepare(bad, name="par-bad")
            assert "line 98:" in str(err.value)


def test_webhooks_replace_polling(tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]) -> None:
    with webhook_job(tmp_path, make_runner) as (runner, receiver, requests):
        status = runner.wait(runner.submit(requests, name="hooks").name)
        assert status.complete and status.done == 10
    # Two batches of 100 s each: no polling, one confirming retrieve per batch event. (The fake clock runs
    # ahead while a delivery is in flight on a real thread: on a very busy machine the 1800 s backstop poll
    # may fire once per batch first; adaptive polling alone takes 18 retrieves here.)
    assert 2 <= endpoint_calls(fake_sim, "/v1/batches/{id}") <= 4
    assert sorted(e.type for e in receiver.events) == ["batch.completed", "batch.completed"]


def test_a_webhook_wakes_a_timed_wait_and_the_job_goes_on(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    with webhook_job(tmp_path, make_runner) as (runner, receiver, requests):
        name = runner.submit(requests, name="timed").name
        start = fake_sim.clock.now()
        status = runner.wait(name, timeout=1000.0)  # above the batches' 100 s, under the 1800 s backstop poll
        assert status.complete and status.state == "done" and status.done == 10
        assert fake_sim.clock.now() - start < 1000.0  # woken by the events, not by the timeout
    assert sorted(e.type for e in receiver.events) == ["batch.completed", "batch.completed"]
    job = runner.store.get_job(name)
    assert job is not None
    assert sorted(detail for _s, kind, detail in runner.store.events(job) if kind == "webhook") == [
        "batch.completed",
        "batch.completed",
    ]


def test_collect_mid_job_writes_what_is_answered_so_far(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_requests=10), longrun=LongrunConfig(batch_lines_per_second=1.0))
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(12)])  # shards of 10 and 2
    runner.submit(requests, name="mid")
    fake_sim.clock.advance(7.0)  # the 2-line batch is completed, the 10-line one is still running
    partial = runner.collect("mid", tmp_path / "out.jsonl")
    assert (partial.written, partial.missing) == (2, 10)
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == ["req-00010", "req-00011"]
    runner.wait("mid")
    final = runner.collect("mid", tmp_path / "out.jsonl")
    assert final.complete and final.written == 12
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [f"req-{i:05d}" for i in range(12)]


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


def _batch_files(sim: Simulator) -> list[str]:
    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        return [f.id for f in client.files.list(purpose="batch")]


def test_input_files_are_deleted_once_the_job_is_done(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_requests=4, poll_interval=1.0))
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(10)])
    name = runner.submit(requests, name="tidy").name
    uploaded = set(_batch_files(fake_sim))
    assert len(uploaded) == 3  # the inputs are on the server while the batches run
    status = runner.wait(name)
    assert status.complete and status.state == "done"
    assert _batch_files(fake_sim) == []
    job = runner.store.get_job(name)
    assert job is not None
    deleted = {detail for _shard, kind, detail in runner.store.events(job) if kind == "input-deleted"}
    assert deleted == uploaded == {s.file_id for s in status.shards}  # each recorded in the job's events
    # The results were downloaded before: collect still writes them all (and nothing is deleted twice).
    summary = runner.collect(name, tmp_path / "out.jsonl")
    assert summary.complete and summary.written == 10
    assert endpoint_calls(fake_sim, "/v1/files/{id}") == 3


def test_keep_files_leaves_the_inputs_on_the_server(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_requests=4, poll_interval=1.0, keep_files=True))
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(10)])
    status = runner.wait(runner.submit(requests, name="kept").name)
    assert status.complete
    assert sorted(_batch_files(fake_sim)) == sorted(s.file_id for s in status.shards if s.file_id)
    job = runner.store.get_job("kept")
    assert job is not None and not [e for e in runner.store.events(job) if e[1] == "input-deleted"]


def test_keep_files_given_to_wait_keeps_the_files_of_a_job_submitted_without_it(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(6)])
    first = make_runner(config=BatchConfig(max_requests=4, poll_interval=1.0))
    name = first.submit(requests, name="later").name
    inputs = set(_batch_files(fake_sim))
    first.close()
    second = make_runner(config=BatchConfig(max_requests=4, poll_interval=1.0, keep_files=True))
    assert second.wait(name).complete
    assert set(_batch_files(fake_sim)) == inputs and len(inputs) == 2
    third = make_runner(config=BatchConfig(poll_interval=1.0))  # a later command without the flag
    job = third.store.get_job(name)
    assert job is not None and third._keeps_files(job)


def test_keep_files_is_remembered_by_the_job(tmp_path: Path) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(4)])
    with Simulator(SimConfig(latency_ms=0)) as sim:
        configure(sim.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0))
        args = ["submit", str(requests), "--name", "kept", "--max-requests", "2"]
        code, out = invoke_batch_cli(sim, tmp_path / "s", *args, "--keep-files")
        assert code == 0, out
        code, out = invoke_batch_cli(sim, tmp_path / "s", *args)  # a rerun without the flag does not turn keeping off
        assert code == 0, out
        inputs = set(_batch_files(sim))
        assert len(inputs) == 2
        code, out = invoke_batch_cli(sim, tmp_path / "s", "wait", "kept", "--poll-interval", "0.01", "--timeout", "60")
        assert code == 0 and "requests 4: done 4" in out, out
        assert inputs <= set(_batch_files(sim))  # `wait` without the flag kept them: the job remembers
    help_text = CliRunner().invoke(app, ["batch", "wait", "--help"], env={"COLUMNS": "200"}).output
    assert "never by `collect` alone or `cancel`" in " ".join(help_text.replace("│", " ").split())
