"""Exit codes: one scheme for every command (each command's help lists its codes), and what `ratepilot run`
exits with — bad input, conflict, a missing key, and the Pilot's errors under --mode batch (no traceback, no key)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ratepilot.batch import BatchRunner
from ratepilot.cli import app
from ratepilot.errors import QuotaExhausted
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import Simulator

from .conftest import KEY, SECRET


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


def test_cli_exit_codes(make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path) -> None:
    sim = make_sim()
    runner = CliRunner()
    good = requests_file(3)
    bad = requests_file(2, name="bad.jsonl", extra=["{oops"])
    out = tmp_path / "out.jsonl"
    base = ["run", "--base-url", sim.base_url, "--api-key", KEY, "-o"]

    result = runner.invoke(app, [*base, str(out), str(bad)])
    assert result.exit_code == ExitCode.BAD_INPUT and "line 3" in result.output and "nothing was sent" in result.output
    assert sim.stats()["requests"]["total"] == 0

    result = runner.invoke(app, [*base, str(out), str(good), "--json"])
    assert result.exit_code == ExitCode.OK, result.output
    assert '"done": 3' in result.output.splitlines()[-1]

    result = runner.invoke(app, [*base, str(out), str(requests_file(1, name="other.jsonl", batch_lines=False))])
    assert result.exit_code == ExitCode.CONFLICT and "another job" in result.output

    result = runner.invoke(app, [*base, str(out), str(good), "--mode", "sometimes"])
    assert result.exit_code == ExitCode.BAD_INPUT

    result = runner.invoke(app, ["run", "-o", str(tmp_path / "o2.jsonl"), str(good)])
    assert result.exit_code == ExitCode.BAD_INPUT and "API key" in result.output
    assert not (tmp_path / "o2.jsonl").exists() and not (tmp_path / "o2.jsonl.ratepilot").exists()


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
