"""The `ratepilot batch` commands end to end against a real-clock simulator (time scale 500: seconds of API
time pass in milliseconds), run in-process with typer's CliRunner."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchRunner
from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
from ratepilot.protocol.webhooks import new_secret
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure
from ratepilot.store import DEFAULT_DB_NAME, Store

from .conftest import API_KEY, chat_line, invoke_batch_cli, read_results, write_jsonl


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
        configure(s.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0, seed=4))
        yield s


def test_submit_wait_collect_status_list(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    requests = write_jsonl(
        tmp_path / "r.jsonl", [chat_line(i, "gpt-4.1-nano" if i % 2 else "gpt-4o-mini") for i in range(9)]
    )
    code, out = invoke_batch_cli(
        sim, state, "submit", str(requests), "--name", "cli", "--max-requests", "2", "--poll-interval", "0.01"
    )
    assert code == 0, out
    assert "batch job cli" in out and "requests 9" in out

    code, out = invoke_batch_cli(sim, state, "wait", "cli", "--poll-interval", "0.01", "--timeout", "60", "--json")
    assert code == 0, out
    status = json.loads(out.strip().splitlines()[-1])
    assert status["complete"] and status["done"] == 9 and len(status["shards"]) == 5  # 3 mini + 2 nano

    code, out = invoke_batch_cli(sim, state, "collect", "cli", "-o", str(tmp_path / "out.jsonl"))
    assert code == 0 and "wrote 9 results" in out
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [f"req-{i:05d}" for i in range(9)]

    code, out = invoke_batch_cli(sim, state, "status")
    assert code == 0 and "batch job cli — done" in out and "cost so far" in out

    code, out = invoke_batch_cli(sim, state, "list", "--limit", "4", "--json")
    page = json.loads(out)
    assert code == 0 and len(page["data"]) == 4 and page["next_after"] == page["data"][-1]["id"]
    assert {row["job"] for row in page["data"]} == {"cli"}
    code, out = invoke_batch_cli(sim, state, "list", "--limit", "4", "--after", page["next_after"], "--json")
    assert code == 0 and len(json.loads(out)["data"]) == 1
    code, out = invoke_batch_cli(sim, state, "list", "--all", "--limit", "4", "--json")
    assert len(json.loads(out)["data"]) == 5

    code, out = invoke_batch_cli(sim, state, "list", "--jobs")
    assert code == 0 and "local batch jobs" in out
    row = next(line for line in out.splitlines() if "│ cli " in line)
    assert [cell.strip() for cell in row.split("│")[1:4]] == ["cli", "done", "9"]


def test_unknown_job_and_foreign_results_file(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, out = invoke_batch_cli(sim, state, "status", "nope")
    assert code == ExitCode.BAD_INPUT and "no batch job named 'nope'" in out
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])
    foreign = tmp_path / "taken.jsonl"
    foreign.write_text('{"something": "else"}\n')
    code, out = invoke_batch_cli(
        sim, state, "submit", str(requests), "--name", "x", "--wait", "-o", str(foreign), "--poll-interval", "0.01"
    )
    assert code == ExitCode.CONFLICT and "not written by ratepilot" in out
    assert foreign.read_text() == '{"something": "else"}\n'  # nothing lost


def test_same_name_for_other_input_is_refused(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    a = write_jsonl(tmp_path / "a.jsonl", [chat_line(0)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat_line(1), chat_line(2)])
    assert invoke_batch_cli(sim, state, "submit", str(a), "--name", "dup", "--poll-interval", "0.01")[0] == 0
    code, out = invoke_batch_cli(sim, state, "submit", str(b), "--name", "dup", "--poll-interval", "0.01")
    assert code == ExitCode.CONFLICT and "planned from different input" in out
    code, out = invoke_batch_cli(sim, state, "forget", "dup")
    assert code == 0
    assert invoke_batch_cli(sim, state, "submit", str(b), "--name", "dup", "--poll-interval", "0.01")[0] == 0


def test_wait_timeout_exits_incomplete(sim: Simulator, tmp_path: Path) -> None:
    configure(sim.state, LongrunConfig(time_scale=1.0))  # seconds per batch: a 0 s wait cannot see it finish
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
    assert invoke_batch_cli(sim, state, "submit", str(requests), "--name", "t", "--poll-interval", "0.01")[0] == 0
    code, out = invoke_batch_cli(sim, state, "wait", "t", "--timeout", "0", "--poll-interval", "0.01")
    assert code == ExitCode.INCOMPLETE, out
    code, out = invoke_batch_cli(sim, state, "collect", "t", "-o", str(tmp_path / "o.jsonl"))
    # 6 while unanswered requests remain; the file holds what is answered
    assert code in (ExitCode.OK, ExitCode.INCOMPLETE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_submit_wait_on_webhooks_instead_of_polling(tmp_path: Path) -> None:
    # The simulator's webhook sender posts batch.* events to the CLI's receiver. The runner waits on its
    # subscriptions with the real clock (which never jumps past an event in flight) and retrieves each batch
    # only to confirm its event: no polling. The batches last a few API seconds (milliseconds at this scale).
    secret = new_secret()
    port = _free_port()
    hooks = LongrunConfig(
        time_scale=50.0, batch_lines_per_second=100.0, webhook_url=f"http://127.0.0.1:{port}/", webhook_secret=secret
    )
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(6)])
    with Simulator(SimConfig(latency_ms=0)) as sim:
        configure(sim.state, hooks)
        env = {"OPENAI_WEBHOOK_SECRET": secret}
        args = ["submit", str(requests), "--name", "hooks", "--max-requests", "3", "--wait", "--timeout", "300"]
        code, out = invoke_batch_cli(
            sim, state, *args, "--webhook-port", str(port), "-o", str(tmp_path / "o.jsonl"), env=env
        )
        assert code == 0, out
        assert f"receiving webhooks on http://127.0.0.1:{port}/" in out
        assert [r["custom_id"] for r in read_results(tmp_path / "o.jsonl")] == [f"req-{i:05d}" for i in range(6)]
        calls = sim.stats()["requests"]["by_endpoint"]
        assert calls.get("/v1/batches/{id}", 0) == 2  # one confirming retrieve per batch, nothing else
        assert sim.stats()["longrun"]["webhooks"]["delivered"] >= 2
        # `wait` takes the same options (its batches may be done before it starts: then no event is needed)
        assert invoke_batch_cli(sim, state, "submit", str(requests), "--name", "later", "--max-requests", "3")[0] == 0
        code, out = invoke_batch_cli(
            sim, state, "wait", "later", "--webhook-port", str(port), "--timeout", "300", env=env
        )
        assert code == 0, out
        assert "requests 6: done 6" in out
    with Store(state / DEFAULT_DB_NAME) as store:
        job = store.get_job("hooks")
        assert job is not None
        woken = [(shard, detail) for shard, kind, detail in store.events(job) if kind == "webhook"]
    assert sorted(woken) == [(0, "batch.completed"), (1, "batch.completed")]  # the events drove the wait


def test_webhook_options_are_checked_before_anything_is_sent(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])
    before = sim.stats()["requests"]["total"]
    port = str(_free_port())
    code, out = invoke_batch_cli(sim, state, "submit", str(requests), "--wait", "--webhook-port", port)
    assert code == ExitCode.BAD_INPUT and "OPENAI_WEBHOOK_SECRET" in out  # no secret
    code, out = invoke_batch_cli(
        sim, state, "submit", str(requests), "--webhook-port", port, "--webhook-secret", new_secret()
    )
    assert code == ExitCode.BAD_INPUT and "only with --wait" in out
    bad = "whsec_!!!not-base64!!!"
    code, out = invoke_batch_cli(
        sim, state, "submit", str(requests), "--wait", "--webhook-port", port, "--webhook-secret", bad
    )
    assert code == ExitCode.BAD_INPUT and "--webhook-secret" in out and bad not in out  # never echoes the secret
    with OpenAI(api_key=API_KEY, base_url=sim.base_url) as client, BatchRunner(client, state_dir=state) as runner:
        runner.prepare(requests, name="x")  # planned, nothing uploaded: `wait` checks the job before the port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        code, out = invoke_batch_cli(sim, state, "wait", "x", "--webhook-port", taken, "--webhook-secret", new_secret())
    assert code == ExitCode.CANNOT_LISTEN and f"cannot listen on 127.0.0.1:{taken}" in out
    assert sim.stats()["requests"]["total"] == before  # nothing uploaded, nothing polled
    help_text = CliRunner().invoke(app, ["batch", "wait", "--help"], env={"COLUMNS": "200"}).output
    assert "--webhook-port" in help_text and "--webhook-secret" in help_text and "OPENAI_WEBHOOK_SECRET" in help_text


def test_keep_files_flag(tmp_path: Path) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(4)])
    with Simulator(SimConfig(latency_ms=0)) as sim:
        configure(sim.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0))
        args = ["submit", str(requests), "--max-requests", "2", "--wait", "--poll-interval", "0.01"]
        code, out = invoke_batch_cli(sim, tmp_path / "a", *args, "--name", "kept", "--keep-files")
        assert code == 0, out
        assert sim.stats()["longrun"]["files"] == 2 + 2  # two inputs kept, two outputs
        code, out = invoke_batch_cli(sim, tmp_path / "b", *args, "--name", "tidy")
        assert code == 0, out
        assert sim.stats()["longrun"]["files"] == 4 + 2  # this job's inputs deleted, its outputs remain


def test_a_job_another_process_owns_exits_5_and_uploads_nothing(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `batch submit --name X` at once must not create every batch twice: one owner per job (an flock)."""
    import os

    from ratepilot import paths
    from ratepilot.joblock import job_lock

    state = tmp_path / "state"
    monkeypatch.setenv("RATEPILOT_HOME", str(state))
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
    uploads = sim.stats()["requests"]["by_endpoint"].get("/v1/files", 0)
    with job_lock(paths.state_dir() / "locks" / "owned.lock", "batch job 'owned'"):  # the other owner
        code, out = invoke_batch_cli(sim, state, "submit", str(requests), "--name", "owned", "--poll-interval", "0.01")
    said = " ".join(out.split())
    assert code == ExitCode.CONFLICT and f"pid {os.getpid()}" in said and "batch job 'owned'" in said
    assert sim.stats()["requests"]["by_endpoint"].get("/v1/files", 0) == uploads  # nothing uploaded
    code, _ = invoke_batch_cli(sim, state, "submit", str(requests), "--name", "owned", "--poll-interval", "0.01")
    assert code == 0  # the owner gone, the job is ours
    assert sim.stats()["requests"]["by_endpoint"].get("/v1/files", 0) > uploads
