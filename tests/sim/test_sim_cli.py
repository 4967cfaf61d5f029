"""`ratepilot sim`: help text, and a bad configuration fails clearly before anything starts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode


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
