"""Review fixes in ``ratepilot run``: mixed endpoints vs the Batch API, errors that must not vanish, keys that
must not show, and the one exit-code scheme shared by every command."""

from __future__ import annotations

import json
import logging
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from ratepilot.batch import BatchInputError, BatchRunner
from ratepilot.cli import app
from ratepilot.engine.sender import Answer, HttpSender
from ratepilot.errors import InputError, QuotaExhausted
from ratepilot.exitcodes import ExitCode
from ratepilot.limits.types import CostTooLarge
from ratepilot.requests import InvalidLine, RequestLine
from ratepilot.results import read_results
from ratepilot.run import RunOptions, arun_job, choose_mode, run_job
from ratepilot.sim import Simulator

from .conftest import KEY, chat

SECRET = "sk-" + "test-review-secret-0123456789"  # in two parts: nothing key-shaped in the source


def _mixed_file(path: Path) -> Path:
    """Lines 1-3 and 5 chat completions, lines 4 and 6 embeddings."""
    lines: list[dict[str, object]] = []
    for i in range(1, 7):
        if i in (4, 6):
            body: dict[str, object] = {"model": "text-embedding-3-small", "input": f"text {i}"}
            lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": body})
        else:
            lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat(i)})
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_auto_runs_a_mixed_endpoint_job_online_and_says_why(make_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    sim = make_sim()
    req = _mixed_file(tmp_path / "mixed.jsonl")
    out = tmp_path / "out.jsonl"
    options = RunOptions(req, out, mode="auto", base_url=sim.base_url, api_key=KEY, batch_min_requests=1)
    summary = run_job(options)
    assert summary.mode == "online" and "mixes endpoints" in summary.mode_reason, summary.mode_reason
    assert summary.exit_code == ExitCode.OK and summary.done == 6
    assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches", 0) == 0
    rule = choose_mode("auto", pending_requests=10**6, estimated_cost_usd=1e3, endpoints=("/v1/a", "/v1/b"))
    assert rule.mode == "online" and "/v1/a, /v1/b" in rule.reason


def test_mode_batch_with_mixed_endpoints_is_bad_input_naming_the_users_lines(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = make_sim()
    req = _mixed_file(tmp_path / "mixed.jsonl")
    out = tmp_path / "out.jsonl"
    args = ["run", "--mode", "batch", "--base-url", sim.base_url, "--api-key", KEY, "-o", str(out), str(req)]
    result = CliRunner().invoke(app, args, env={"RATEPILOT_HOME": str(tmp_path / "home"), "COLUMNS": "400"})
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "Traceback" not in result.output and "nothing was sent" in result.output
    assert "line 4" in result.output and "line 6" in result.output and "(line 1)" in result.output
    assert "2 invalid lines" in result.output and str(req) in result.output
    assert sim.stats()["requests"]["total"] == 0 and not out.exists()


def test_batch_pipeline_input_errors_name_the_users_lines() -> None:
    from ratepilot.run.job import _in_user_file

    copy_error = BatchInputError(
        "/state/_inputs/copy.jsonl",
        [InvalidLine(2, "custom_id", "duplicate custom_id 'x' (first on line 1)", "x")],
        1,
    )
    assert isinstance(copy_error, InputError) and isinstance(copy_error, ValueError)
    restated = _in_user_file(copy_error, "/home/me/req.jsonl", array("L", [3, 8, 12]))
    assert restated.line == 8 and "first on line 3" in restated.message and "req.jsonl" in restated.message
    assert "copy.jsonl" not in restated.message


def test_run_mode_batch_maps_pilot_errors_to_exit_codes(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path, monkeypatch: Any
) -> None:
    def run(self: BatchRunner, *args: Any, **kwargs: Any) -> Any:
        raise QuotaExhausted("insufficient_quota", model="gpt-4o-mini")

    monkeypatch.setattr(BatchRunner, "run", run)
    sim = make_sim()
    req = requests_file(3)
    args = ["run", "--mode", "batch", "--base-url", sim.base_url, "--api-key", SECRET, "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, str(req)], env={"RATEPILOT_HOME": str(tmp_path / "home")})
    assert result.exit_code == ExitCode.QUOTA, result.output
    assert "Traceback" not in result.output and SECRET not in result.output and "quota" in result.output


class _Flaky:
    """A real HttpSender (Pilot transport, simulator) except for two requests that fail unexpectedly."""

    def __init__(self, http: HttpSender) -> None:
        self.http = http

    async def send(self, request: RequestLine) -> Answer:
        if request.custom_id == "req-3":
            raise CostTooLarge(f"cost 10**9 tokens exceeds every limit (key {SECRET})")
        if request.custom_id == "req-7":
            raise ValueError("a bug")
        return await self.http.send(request)


async def test_unexpected_task_errors_are_logged_and_leave_the_job_incomplete(
    make_sim: Callable[..., Simulator],
    requests_file: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ratepilot.client import Pilot

    sim = make_sim()
    req = requests_file(10)
    out = tmp_path / "out.jsonl"
    options = RunOptions(req, out, base_url=sim.base_url, api_key=KEY, cache=False)
    pilot = Pilot()
    http = HttpSender(pilot, sim.base_url, KEY)
    try:
        with caplog.at_level(logging.ERROR, logger="ratepilot.engine.online"):
            summary = await arun_job(options, sender=_Flaky(http), pilot=pilot)
    finally:
        await http.aclose()
        pilot.close()
    assert summary.exit_code == ExitCode.INCOMPLETE and summary.unfinished == 2 and summary.done == 8
    assert "CostTooLarge" in summary.message and "2 of them failed with an unexpected error" in summary.message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "req-3" in logged and "req-7" in logged and "ValueError: a bug" in logged
    assert SECRET not in logged and SECRET not in summary.message
    resumed = await arun_job(options)  # the two are asked again
    assert resumed.exit_code == ExitCode.OK and resumed.done == 10
    assert len(list(read_results(out))) == 10


def test_the_api_key_is_in_no_repr(make_sim: Callable[..., Simulator], requests_file: Callable[..., Path]) -> None:
    sim = make_sim()
    req = requests_file(2)
    options = RunOptions(req, req.with_name("out.jsonl"), base_url=sim.base_url, api_key=SECRET)
    assert SECRET not in repr(options) and SECRET not in str(options)
    summary = run_job(options)
    assert summary.exit_code == ExitCode.OK
    for text in (repr(summary), str(summary), json.dumps(summary.to_dict())):
        assert SECRET not in text


def test_one_exit_code_scheme_for_every_command() -> None:
    import ratepilot.run

    assert ratepilot.run.ExitCode is ExitCode
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "UNEXPECTED": 1,
        "BAD_INPUT": 2,
        "QUOTA": 3,
        "BUDGET": 4,
        "CONFLICT": 5,
        "INCOMPLETE": 6,
        "AUTH": 7,
        "API_ERROR": 8,
        "CANNOT_LISTEN": 9,
        "HTTP_ERRORS": 10,
        "STORE_UNAVAILABLE": 11,
        "WRITE_FAILED": 12,
        "INTERRUPTED": 130,
    }
    runner = CliRunner()
    for command, codes in {
        ("run",): ("3 insufficient", "6 incomplete", "8 API refused", "130 interrupted"),
        ("batch",): ("3 insufficient", "5 results file", "6 incomplete", "8 API refused"),
        ("limits",): ("3 insufficient", "7 API key rejected", "8 the API"),
        ("sim",): ("2 bad configuration", "9 cannot listen"),
        ("webhooks", "serve"): ("2 bad", "9 cannot listen"),
    }.items():
        result = runner.invoke(app, [*command, "--help"], terminal_width=400)
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.replace("│", " ").split())
        for code in codes:
            assert code in text, (command, code, text)
