"""The `ratepilot batch` commands end to end against a real-clock simulator (time scale 500: seconds of API
time pass in milliseconds), run in-process with typer's CliRunner: options checked before anything is sent, the
Pilot's errors as exit codes (no traceback, no key), hints, tables and help that fits 80 columns."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchRunner
from ratepilot.batch.state import DEFAULT_DB_NAME, BatchState
from ratepilot.cli import app
from ratepilot.errors import BudgetExceeded, QuotaExhausted, RequestTooLarge, RetriesExhausted
from ratepilot.exitcodes import ExitCode
from ratepilot.protocol.webhooks import new_secret
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import API_KEY, chat_line, connection_error, invoke_batch_cli, read_results, write_jsonl

LONG_KEY = "sk-" + "test-batch-review-0123456789abcdef"  # key-shaped at run time: must never be printed


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
        configure(s.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0, seed=4))
        yield s


@pytest.fixture(scope="module")
def cli_sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
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
    with BatchState(state / DEFAULT_DB_NAME) as store:
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


_PILOT_ERRORS: dict[str, tuple[Callable[[], BaseException], ExitCode]] = {
    "quota": (lambda: QuotaExhausted("insufficient_quota", model="gpt-4o-mini"), ExitCode.QUOTA),
    "budget": (
        lambda: BudgetExceeded(budget_usd=0.01, spent_usd=0.01, worst_case_usd=0.002, model="gpt-4o-mini"),
        ExitCode.BUDGET,
    ),
    "too_large": (lambda: RequestTooLarge(model="gpt-4o-mini", limit=100, requested=1000), ExitCode.API_ERROR),
    "retries": (
        lambda: RetriesExhausted(
            attempts=5, reason="max attempts", last_status=503, last_message=f"overloaded for {LONG_KEY}"
        ),
        ExitCode.API_ERROR,
    ),
    "wrapped_quota": (lambda: connection_error(QuotaExhausted("insufficient_quota")), ExitCode.QUOTA),
}


@pytest.mark.parametrize("kind", sorted(_PILOT_ERRORS))
def test_batch_cli_maps_pilot_errors_to_exit_codes(
    kind: str, cli_sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, expected = _PILOT_ERRORS[kind]

    def submit(self: BatchRunner, requests: Any, *, name: str | None = None) -> Any:
        raise make()

    monkeypatch.setattr(BatchRunner, "submit", submit)
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])
    env = {"OPENAI_API_KEY": LONG_KEY, "OPENAI_BASE_URL": cli_sim.base_url, "RATEPILOT_HOME": str(tmp_path / "s")}
    result = CliRunner().invoke(app, ["batch", "submit", str(requests), "--name", "e"], env=env)
    assert result.exit_code == expected, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and LONG_KEY not in result.output
    assert result.output.startswith("error: ")


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


def test_money_keeps_three_significant_digits_for_small_jobs() -> None:
    from ratepilot.cli.batch import _money

    assert _money(0.000123456) == "0.000123"
    assert _money(0.00999) == "0.00999"
    assert _money(0.0000012) == "0.00000120"
    assert _money(1.23456) == "1.2346"
    assert _money(0.0) == "0.00"


@pytest.mark.parametrize("command", ["submit", "status", "wait", "collect", "cancel", "list", "forget"])
def test_help_fits_eighty_columns(command: str) -> None:
    result = CliRunner().invoke(app, ["batch", command, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output  # no help text cut short
