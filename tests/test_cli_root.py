"""The ``ratepilot`` command itself: version, help, and every documented command registered."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from ratepilot import __version__
from ratepilot.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ratepilot {__version__}"


def test_no_command_prints_help_and_fails() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    for command in ("run", "batch", "sim", "limits", "demo", "webhooks", "cache"):
        assert command in result.output


def test_python_dash_m_is_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "ratepilot", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"ratepilot {__version__}"
