"""Review fixes of the reworked Batch pipeline: keep-files remembered by the job, bounded duplicate reports,
webhook option checks, a webhook waking a timed wait."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
from ratepilot.protocol.webhooks import new_secret
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure
from ratepilot.store import JobRecord, Store

from .conftest import API_KEY, chat_line, invoke_batch_cli, webhook_job, write_jsonl


def _batch_files(sim: Simulator) -> list[str]:
    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        return [f.id for f in client.files.list(purpose="batch")]


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


def _duplicates_by_grouping(ids: list[str]) -> tuple[list[tuple[str, int, int]], int]:
    """The report as the previous query made it (every duplicate in memory), to compare with."""
    lines: dict[str, list[int]] = {}
    for idx, cid in enumerate(ids, 1):
        lines.setdefault(cid, []).append(idx)
    found = sorted(((cid, idxs[0], idx) for cid, idxs in lines.items() for idx in idxs[1:]), key=lambda d: d[2])
    return found[:20], sum(len(idxs) - 1 for idxs in lines.values())


def test_duplicate_report_is_the_first_duplicates_in_line_order(tmp_path: Path) -> None:
    rng = random.Random(7)
    ids = [f"id-{rng.randrange(300)}" for _ in range(1000)]  # many duplicates, some ids three times or more
    with Store(tmp_path / "db.sqlite3") as store:
        job = store.create_job(JobRecord(name="dups", input_path="x", fingerprint="f", nonce="n"))
        with store.bulk():
            store.add_lines(job, [(idx, cid, 0) for idx, cid in enumerate(ids, 1)])
            found = store.index_lines(job, report=20)
    assert found == _duplicates_by_grouping(ids)
    assert found[1] == 1000 - len(set(ids))


def test_webhook_host_needs_a_port_and_wait_checks_the_job_first(tmp_path: Path) -> None:
    with Simulator(SimConfig(latency_ms=0)) as sim:
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])
        code, out = invoke_batch_cli(sim, tmp_path / "s", "submit", str(requests), "--webhook-host", "0.0.0.0")
        assert code == 2 and "--webhook-host" in out and "only with --webhook-port" in out  # a usage error
        code, out = invoke_batch_cli(
            sim, tmp_path / "s", "wait", "nope", "--webhook-port", "0", "--webhook-secret", new_secret()
        )
        assert code == ExitCode.BAD_INPUT and "no batch job named 'nope'" in out
        assert "receiving webhooks" not in out  # no port was taken for a job that does not exist
        assert sim.stats()["requests"]["total"] == 0
    help_text = CliRunner().invoke(app, ["batch", "submit", "--help"], env={"COLUMNS": "200"}).output
    assert "Only with --wait" in " ".join(help_text.replace("│", " ").split())


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
