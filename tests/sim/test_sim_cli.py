"""`ratepilot sim`: help text, and a bad configuration fails clearly before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import SimConfig


def test_sim_help_lists_the_flags() -> None:
    result = CliRunner().invoke(app, ["sim", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--host", "--port", "--rpm", "--tpm", "--rpd", "--tpd", "--credit-usd", "--latency-ms", "--config"):
        assert flag in result.output


def test_sim_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text("[limits]\ntpm = -5\n")
    result = CliRunner().invoke(app, ["sim", "--config", str(config), "--port", "0"])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "limits.tpm" in result.output


def test_sim_missing_config_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sim", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "cannot read" in result.output


def test_sim_busy_port_exits_cannot_listen() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["sim", "--port", str(port), "--log-level", "critical"])
    assert result.exit_code == ExitCode.CANNOT_LISTEN, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


# -- realistic enforcement flags ------------------------------------------------------------------------------


def _config_of(monkeypatch: pytest.MonkeyPatch, *args: str) -> SimConfig:
    """The SimConfig `ratepilot sim ARGS` serves. The command runs for real, on a free port, up to the web server's
    run loop, which returns at once (nothing is served) after noting the configuration of the app it was given."""
    import uvicorn

    served: list[SimConfig] = []

    def run(server: Any, sockets: Any = None) -> None:
        served.append(server.config.app.state.config)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(app, ["sim", "--port", "0", *args])
    assert result.exit_code == 0, result.output
    (config,) = served
    return config


def test_sim_help_lists_the_realistic_flags() -> None:
    # rich sizes the help from COLUMNS (a narrow terminal truncates long flag names with an ellipsis).
    result = CliRunner().invoke(app, ["sim", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in (
        "--realistic",
        "--quantum-s",
        "--charge-refusals",
        "--no-charge-refusals",
        "--headers-missing-p",
        "--headers-on-429-p",
        "--retry-after-p",
        "--ramp-factor",
        "--ramp-window-s",
        "--ramp-floor",
        "--slow-down-status",
        "--token-headers-unknown-p",
    ):
        assert flag in result.output


def test_sim_defaults_without_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config_of(monkeypatch) == SimConfig()


def test_sim_realistic_flags_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_of(
        monkeypatch,
        "--quantum-s",
        "2.5",
        "--no-charge-refusals",
        "--headers-missing-p",
        "0.1",
        "--headers-on-429-p",
        "0.25",
        "--retry-after-p",
        "0",
        "--ramp-factor",
        "1.5",
        "--ramp-window-s",
        "30",
        "--ramp-floor",
        "0.2",
        "--slow-down-status",
        "503",
        "--token-headers-unknown-p",
        "0.3",
    )
    assert config.quantum_s == 2.5
    assert config.count_refused_requests is False
    assert config.faults.missing_headers == 0.1
    assert config.faults.headers_on_429_p == 0.25
    assert config.faults.retry_after_p == 0.0
    assert (config.ramp_factor, config.ramp_window_s, config.ramp_floor) == (1.5, 30.0, 0.2)
    assert config.slow_down_status == 503 and config.faults.unknown_token_headers == 0.3
    assert _config_of(monkeypatch, "--charge-refusals").count_refused_requests is True


def test_sim_realistic_preset_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _config_of(monkeypatch, "--realistic") == SimConfig.realistic()
    config = _config_of(monkeypatch, "--realistic", "--quantum-s", "0", "--retry-after-p", "1", "--rpm", "300")
    assert config.quantum_s is None  # 0: off, even under the preset
    assert config.faults.retry_after_p == 1.0 and config.faults.headers_on_429_p == 0.5  # the rest stays
    assert config.rpm == 300 and config.ramp_factor == 2.0
    assert _config_of(monkeypatch, "--realistic", "--ramp-factor", "0").ramp_factor is None
    # With a file: the preset, then the file, then the flags.
    path = tmp_path / "sim.toml"
    path.write_text("ramp_floor = 0.25\n[faults]\nretry_after_p = 0.75\n")
    config = _config_of(monkeypatch, "--realistic", "--config", str(path), "--ramp-window-s", "60")
    assert (config.quantum_s, config.ramp_floor, config.ramp_window_s) == (1.0, 0.25, 60.0)
    assert config.faults.retry_after_p == 0.75 and config.faults.missing_headers == 0.02


def test_sim_headers_on_429_flag_replaces_the_files_bool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text("[faults]\nmissing_headers_on_429 = true\n")
    assert _config_of(monkeypatch, "--config", str(path)).faults.ratelimit_headers_on_429 == 0.0
    config = _config_of(monkeypatch, "--config", str(path), "--headers-on-429-p", "0.5")
    assert config.faults.ratelimit_headers_on_429 == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantum-s", "61"], "--quantum-s"),
        (["--quantum-s", "-1"], "--quantum-s"),
        (["--quantum-s", "soon"], "--quantum-s"),
        (["--headers-on-429-p", "1.5"], "--headers-on-429-p"),
        (["--retry-after-p", "-0.1"], "--retry-after-p"),
        (["--headers-missing-p", "2"], "--headers-missing-p"),
        (["--ramp-factor", "0.5"], "--ramp-factor: ramp_factor must be a number >= 1"),
        (["--ramp-window-s", "0"], "--ramp-window-s: ramp_window_s must be a positive number"),
        (["--ramp-floor", "-1"], "--ramp-floor"),
        (["--slow-down-status", "500"], "--slow-down-status: slow_down_status must be 429 or 503"),
        (["--token-headers-unknown-p", "2"], "--token-headers-unknown-p"),
        (["--quota-error-code", "rate_limit_exceeded"], "--quota-error-code: quota_error_code must be one of"),
    ],
)
def test_sim_bad_realistic_values_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["sim", "--port", "0", *args], terminal_width=200)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert message in result.output


def test_sim_quota_error_code_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _config_of(monkeypatch).quota_error_code == "insufficient_quota"
    config = _config_of(monkeypatch, "--quota-error-code", "credit_balance_exhausted", "--credit-usd", "0")
    assert config.quota_error_code == "credit_balance_exhausted" and config.credit_usd == 0.0
    path = tmp_path / "sim.toml"
    path.write_text('quota_error_code = "project_spend_limit_exceeded"\n')
    assert _config_of(monkeypatch, "--config", str(path)).quota_error_code == "project_spend_limit_exceeded"
    flagged = _config_of(monkeypatch, "--config", str(path), "--quota-error-code", "organization_usage_limit_exceeded")
    assert flagged.quota_error_code == "organization_usage_limit_exceeded"  # the flag wins over the file


def test_sim_flex_flags_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_of(monkeypatch, "--flex-unavailable-p", "0.3", "--flex-latency-ms", "1500")
    assert (config.flex_unavailable_p, config.flex_latency_ms) == (0.3, 1500.0)
    assert _config_of(monkeypatch).flex_unavailable_p == 0.0  # off unless asked
