"""`--json` covers every outcome: each failure prints one error object on stdout (parse errors and bugs too),
a result document is never followed by a second one, and commands that read local state need no key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.cli._output import install, print_json, rounded
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import Simulator

KEY = "test-key-cli-json-0123456789"
LEAKED = "sk-" + "proj-leaked-0123456789"  # key-shaped, built in two parts so the source holds no key


def _documents(stdout: str) -> list[Any]:
    """Every JSON document printed on stdout (one per line)."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _error(result: Any, code: ExitCode) -> dict[str, Any]:
    """The single error object a failed ``--json`` command printed, checked against its exit code."""
    assert result.exit_code == code, result.output
    docs = _documents(result.stdout)
    assert len(docs) == 1, result.stdout
    error = docs[0]["error"]
    assert error["exit_code"] == code and error["code"] == code.name.lower() and error["message"]
    assert KEY not in result.output
    return dict(error)


def test_run_errors_are_json(tmp_path: Path, requests_file: Callable[..., Path]) -> None:
    runner = CliRunner()
    out = str(tmp_path / "out.jsonl")
    good = str(requests_file(2))

    missing = _error(runner.invoke(app, ["run", str(tmp_path / "nope.jsonl"), "-o", out, "--json"]), ExitCode.BAD_INPUT)
    assert "no such file" in missing["message"]

    no_key = _error(runner.invoke(app, ["run", good, "-o", out, "--json"]), ExitCode.BAD_INPUT)
    assert "API key" in no_key["message"]

    bad_mode = ["run", good, "-o", out, "--api-key", KEY, "--mode", "sometimes", "--json"]
    assert "--mode" in _error(runner.invoke(app, bad_mode), ExitCode.BAD_INPUT)["message"]

    # Caught by the parser before the command runs: still an error object (and click's usage text on stderr).
    parsed = runner.invoke(app, ["run", good, "-o", out, "--max-in-flight", "1", "--json"])
    assert "--max-in-flight" in _error(parsed, ExitCode.BAD_INPUT)["message"]
    assert "Usage" in parsed.stderr

    bad_line = requests_file(1, name="bad.jsonl", extra=["{oops"])
    invalid = _error(
        runner.invoke(app, ["run", str(bad_line), "-o", out, "--api-key", KEY, "--json"]), ExitCode.BAD_INPUT
    )
    assert "line 2" in invalid["message"] and "nothing was sent" in invalid["message"]


def test_run_stopped_by_quota_prints_one_document(
    tmp_path: Path, make_sim: Callable[..., Simulator], requests_file: Callable[..., Path]
) -> None:
    """A run that stops reports it in its summary (stop, message, exit_code): no second, error, document."""
    sim = make_sim(credit_usd=0.0)
    args = ["run", str(requests_file(3)), "-o", str(tmp_path / "out.jsonl"), "--base-url", sim.base_url]
    result = CliRunner().invoke(app, [*args, "--api-key", KEY, "--json"])
    assert result.exit_code == ExitCode.QUOTA, result.output
    (summary,) = _documents(result.stdout)
    assert summary["stop"] == "quota" and summary["exit_code"] == ExitCode.QUOTA and "billing" in summary["message"]


def test_limits_errors_are_json(make_sim: Callable[..., Simulator]) -> None:
    runner = CliRunner()
    broke = make_sim(credit_usd=0.0)
    quota = _error(
        runner.invoke(app, ["limits", "--base-url", broke.base_url, "--api-key", KEY, "--json"]), ExitCode.QUOTA
    )
    assert "billing" in quota["message"]
    no_key = runner.invoke(app, ["limits", "--base-url", broke.base_url, "--json"], env={"OPENAI_API_KEY": ""})
    assert "API key" in _error(no_key, ExitCode.BAD_INPUT)["message"]
    unreachable = ["limits", "--base-url", "http://127.0.0.1:9/v1", "--api-key", KEY, "--json"]
    assert "127.0.0.1:9" in _error(runner.invoke(app, unreachable), ExitCode.API_ERROR)["message"]


def test_limits_json_numbers_are_rounded(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(rpm=500, tpm=30_000)
    result = CliRunner().invoke(app, ["limits", "--base-url", sim.base_url, "--api-key", KEY, "--json"])
    assert result.exit_code == 0, result.output
    (out,) = _documents(result.stdout)
    for dim in out["limiter"].values():
        assert isinstance(dim["remaining"], int) and isinstance(dim["limit"], int)
        assert dim["reset_s"] == round(dim["reset_s"], 3)


def test_batch_errors_are_json(tmp_path: Path, requests_file: Callable[..., Path]) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path / "state")]
    unknown = _error(runner.invoke(app, ["batch", "status", "nope", *state, "--json"]), ExitCode.BAD_INPUT)
    assert "nope" in unknown["message"]

    no_key = runner.invoke(
        app, ["batch", "submit", str(requests_file(2)), *state, "--json"], env={"OPENAI_API_KEY": ""}
    )
    assert "OPENAI_API_KEY" in _error(no_key, ExitCode.BAD_INPUT)["message"]

    # A bad value the command itself finds (typer.BadParameter): an error object, then click's usage error.
    bad_flag = ["batch", "submit", str(requests_file(2)), *state, "--fallback", "sometimes", "--json"]
    bad = runner.invoke(app, bad_flag, env={"OPENAI_API_KEY": KEY})
    assert "--fallback" in _error(bad, ExitCode.BAD_INPUT)["message"]


def test_batch_list_jobs_reads_local_state_without_a_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["batch", "list", "--jobs", "--state-dir", str(tmp_path / "state"), "--json"], env={"OPENAI_API_KEY": ""}
    )
    assert result.exit_code == 0, result.output
    assert _documents(result.stdout) == [[]]
    table = CliRunner().invoke(app, ["batch", "list", "--jobs", "--state-dir", str(tmp_path / "state")])
    assert table.exit_code == 0 and "local batch jobs" in table.output


def test_json_numbers_are_rounded() -> None:
    data = {"remaining": 27.000179751999895, "cost_usd": 8.25e-07, "at": [1_767_225_600.123456789, float("nan")]}
    assert rounded(data) == {"remaining": 27.00018, "cost_usd": 8.25e-07, "at": [1_767_225_600.123457, None]}


# -- the safety net, on a small app: commands that print no JSON of their own still give an error object ---------


def _tiny_app() -> typer.Typer:
    tiny = typer.Typer()

    @tiny.command()
    def refused(as_json: bool = typer.Option(False, "--json")) -> None:
        raise typer.Exit(ExitCode.AUTH)  # no message of its own

    @tiny.command()
    def unfinished(as_json: bool = typer.Option(False, "--json")) -> None:
        print_json({"done": 1, "total": 2})
        raise typer.Exit(ExitCode.INCOMPLETE)  # an outcome, reported by its document

    @tiny.command()
    def buggy(as_json: bool = typer.Option(False, "--json")) -> None:
        raise RuntimeError(f"boom with key {LEAKED}")

    @tiny.command()
    def plain(as_json: bool = typer.Option(False, "--json")) -> None:
        raise typer.Exit(ExitCode.AUTH)

    install(tiny)
    return tiny


@pytest.mark.parametrize("command", ["refused", "unfinished", "buggy"])
def test_every_outcome_of_a_json_command_is_one_document(command: str) -> None:
    result = CliRunner().invoke(_tiny_app(), [command, "--json"])
    (doc,) = _documents(result.stdout)
    if command == "refused":
        assert doc["error"] == {"code": "auth", "message": "the API key was rejected", "exit_code": 7}
    elif command == "unfinished":
        assert doc == {"done": 1, "total": 2} and result.exit_code == ExitCode.INCOMPLETE
    else:
        assert doc["error"]["code"] == "unexpected" and "RuntimeError: boom" in doc["error"]["message"]
        assert LEAKED not in doc["error"]["message"] and "sk-...6789" in doc["error"]["message"]  # scrubbed
        assert isinstance(result.exception, RuntimeError)  # still a traceback: it is a bug


def test_without_json_nothing_is_added() -> None:
    result = CliRunner().invoke(_tiny_app(), ["plain"])
    assert result.exit_code == ExitCode.AUTH and result.stdout == ""
