"""`ratepilot limits` against the simulator: one probe request, a table or JSON, the key only redacted."""

from __future__ import annotations

import json
from collections.abc import Callable

from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.cli.limits import LimitsExit
from ratepilot.sim import Simulator

from .helpers import total_requests


def test_limits_json(make_sim: Callable[..., Simulator], api_key: str) -> None:
    sim = make_sim(rpm=500, tpm=30_000)
    result = CliRunner().invoke(
        app, ["limits", "--model", "gpt-4o-mini", "--base-url", sim.base_url, "--api-key", api_key, "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["server"]["requests"]["limit"] == 500 and out["server"]["requests"]["remaining"] == 499
    assert out["server"]["tokens"]["limit"] == 30_000
    assert out["api_key"] == "sk-...CRET"
    assert api_key not in result.output
    assert total_requests(sim) == 1


def test_limits_table_with_key_from_env(make_sim: Callable[..., Simulator], api_key: str) -> None:
    sim = make_sim(rpm=500, tpm=30_000)
    result = CliRunner().invoke(
        app,
        ["limits", "--model", "text-embedding-3-small", "--base-url", sim.base_url],
        env={"OPENAI_API_KEY": api_key, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "remaining" in result.output and "30,000" in result.output and "sk-...CRET" in result.output
    assert api_key not in result.output


def test_limits_errors(make_sim: Callable[..., Simulator], api_key: str) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["limits", "--base-url", "http://127.0.0.1:9/v1"], env={"OPENAI_API_KEY": ""})
    assert missing.exit_code == LimitsExit.BAD_INPUT
    broke = make_sim(credit_usd=0.0)
    quota = runner.invoke(app, ["limits", "--base-url", broke.base_url, "--api-key", api_key])
    assert quota.exit_code == LimitsExit.QUOTA
    assert "billing" in quota.output and api_key not in quota.output
    assert total_requests(broke) == 1
