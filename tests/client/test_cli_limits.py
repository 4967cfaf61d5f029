"""`ratepilot limits` against the simulator: one probe request, a table or JSON, the key only redacted."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
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
    assert missing.exit_code == ExitCode.BAD_INPUT
    broke = make_sim(credit_usd=0.0)
    quota = runner.invoke(app, ["limits", "--base-url", broke.base_url, "--api-key", api_key])
    assert quota.exit_code == ExitCode.QUOTA
    assert "billing" in quota.output and api_key not in quota.output
    assert total_requests(broke) == 1


def test_limits_unreachable_api_is_an_api_error(api_key: str) -> None:
    # Port 9 (discard) is closed: the probe cannot connect. Exit 8 (API error), not 1 (a bug).
    result = CliRunner().invoke(app, ["limits", "--base-url", "http://127.0.0.1:9/v1", "--api-key", api_key])
    assert result.exit_code == ExitCode.API_ERROR, result.output
    assert api_key not in result.output and "Traceback" not in result.output


def test_limits_are_read_before_the_pilot_is_closed(
    make_sim: Callable[..., Simulator], api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ratepilot.client import Pilot

    closed: list[bool] = []
    real_close, real_limits = Pilot.close, Pilot.limits

    def close(self: Pilot) -> None:
        closed.append(True)
        real_close(self)

    def limits(self: Pilot, model: str, **kw: Any) -> Any:
        assert not closed, "pilot.limits() called after pilot.close()"
        return real_limits(self, model, **kw)

    monkeypatch.setattr(Pilot, "close", close)
    monkeypatch.setattr(Pilot, "limits", limits)
    sim = make_sim(rpm=500, tpm=30_000)
    result = CliRunner().invoke(app, ["limits", "--base-url", sim.base_url, "--api-key", api_key, "--json"])
    assert result.exit_code == 0, result.output
    assert closed
