"""``ratepilot webhooks serve``: a real server process printing verified events, refusing bad ones."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.clock import SystemClock
from ratepilot.exitcodes import ExitCode

from .conftest import delivery, event_body


def test_bad_secret_is_a_usage_error_that_does_not_echo_it() -> None:
    result = CliRunner().invoke(app, ["webhooks", "serve", "--secret", "whsec_!!!hunter2hunter2"])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "not valid base64" in result.output and "hunter2" not in result.output


def test_busy_port_is_a_clear_error(secret: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["webhooks", "serve", "--secret", secret, "--port", str(port)])
    assert result.exit_code == ExitCode.CANNOT_LISTEN and f"cannot listen on 127.0.0.1:{port}" in result.output


@pytest.fixture
def served(secret: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ratepilot.cli import main; main()", "webhooks", "serve", "--port", "0"],
        env={"OPENAI_WEBHOOK_SECRET": secret, "PATH": "", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the server announces itself (or exits)
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line
    try:
        yield proc, f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_serve_prints_verified_events_and_refuses_the_rest(
    served: tuple[subprocess.Popen[str], str], secret: str
) -> None:
    proc, url = served
    assert proc.stdout is not None and proc.stderr is not None
    clock = SystemClock()  # the server checks timestamps against real time
    body = event_body("batch_cli", "batch.completed")
    with httpx.Client(base_url=url) as http:
        tampered = http.post("/hook", content=body.replace(b"cli", b"xyz"), headers=delivery(secret, clock, body))
        ok = http.post("/hook", content=body, headers=delivery(secret, clock, body))
    assert tampered.status_code == 400 and ok.status_code == 200
    event = json.loads(proc.stdout.readline())
    assert event["type"] == "batch.completed" and event["object_id"] == "batch_cli"
    assert "rejected delivery: no matching v1 signature" in proc.stderr.readline()
