"""--mode batch / auto: the Batch pipeline runs the job, its results land in the same results file; a job that
mixes endpoints runs online under auto and is bad input under --mode batch; the Batch pipeline's input errors
name the user's own lines."""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
from typer.testing import CliRunner

from ratepilot.batch import BatchInputError
from ratepilot.cli import app
from ratepilot.errors import InputError
from ratepilot.requests import InvalidLine
from ratepilot.results import read_results
from ratepilot.run import ExitCode, RunOptions, choose_mode, run_job
from ratepilot.sim import Simulator
from ratepilot.sim.longrun import configure
from ratepilot.sim.longrun.config import LongrunConfig

from .conftest import KEY, chat


def test_auto_picks_batch_for_a_large_job_and_resumes_after_online_progress(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    configure(sim.state, LongrunConfig(time_scale=1000.0))  # a batch takes milliseconds
    req = requests_file(30)
    out = tmp_path / "out.jsonl"
    # Part of the job online first (budget stops it), then the rest through the Batch API, same file.
    first = run_job(RunOptions(req, out, base_url=sim.base_url, api_key=KEY, budget_usd=0.00002, cache=False))
    assert first.exit_code == ExitCode.BUDGET and 0 < first.done < 30
    summary = run_job(
        RunOptions(
            req,
            out,
            mode="auto",
            base_url=sim.base_url,
            api_key=KEY,
            batch_min_requests=10,
            batch_poll_interval_s=0.0,
            state_dir=tmp_path / "state",
        )
    )
    assert summary.mode == "batch" and "10" in summary.mode_reason, summary
    assert summary.exit_code == ExitCode.OK and summary.done == 30 and summary.already_done == first.done
    assert Counter(line["custom_id"] for line in read_results(out)) == Counter({f"req-{i}": 1 for i in range(30)})
    assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches", 0) >= 1


def test_a_batch_job_whose_requests_all_failed_does_not_exit_0(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = make_sim()
    configure(sim.state, LongrunConfig(time_scale=1000.0))
    req = tmp_path / "req.jsonl"
    body = {"model": "gpt-nonexistent", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    req.write_text("".join(json.dumps(body) + "\n" for _ in range(4)))
    out = tmp_path / "out.jsonl"
    options = RunOptions(
        req, out, mode="batch", base_url=sim.base_url, api_key=KEY, batch_poll_interval_s=0.0, state_dir=tmp_path / "s"
    )
    summary = run_job(options)
    assert summary.exit_code == ExitCode.HTTP_ERRORS, summary
    assert summary.errors_by_code == {"404 model_not_found": 4}, summary
    assert "4 x 404 model_not_found" in summary.message
    assert len(list(read_results(out))) == 4


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
