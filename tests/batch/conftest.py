"""Fixtures for the Batch pipeline: a simulator on a fake clock, request files, a runner factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.cli import app
from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

API_KEY = "sk-test-batch-0000"


def chat_line(i: int, model: str = "gpt-4o-mini", words: int = 3) -> dict[str, Any]:
    content = f"request {i}: " + " ".join(["hello"] * words)
    return {
        "custom_id": f"req-{i:05d}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 5},
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else orjson.dumps(line) + b"\n")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [orjson.loads(raw) for raw in fh]


@pytest.fixture
def fake_sim() -> Iterator[Simulator]:
    """A simulator whose clock is a FakeClock (autojump): the runner's sleeps move the batches' time."""
    with Simulator(SimConfig(latency_ms=0), clock=FakeClock()) as sim:
        yield sim


@pytest.fixture
def make_runner(fake_sim: Simulator, tmp_path: Path) -> Iterator[Callable[..., BatchRunner]]:
    """``make_runner(config=..., longrun=...)`` -> a BatchRunner on the fake-clock simulator (closed after)."""
    made: list[tuple[BatchRunner, OpenAI]] = []

    def make(config: BatchConfig | None = None, longrun: LongrunConfig | None = None, **kw: Any) -> BatchRunner:
        if longrun is not None:
            configure(fake_sim.state, longrun)
        client = OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0)
        runner = BatchRunner(
            client,
            state_dir=tmp_path / "state",
            config=config or BatchConfig(poll_interval=1.0),
            clock=fake_sim.clock,
            **kw,
        )
        made.append((runner, client))
        return runner

    yield make
    for runner, client in made:
        runner.close()
        client.close()


def invoke_batch_cli(sim: Simulator, state: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``ratepilot batch <args>`` against ``sim`` with its state in ``state``: (exit code, output)."""
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": sim.base_url,
        "RATEPILOT_HOME": str(state),
        "OPENAI_WEBHOOK_SECRET": "",
        **(env or {}),
    }
    result = CliRunner().invoke(app, ["batch", *args], env=env)
    return result.exit_code, result.output


@contextmanager
def webhook_job(tmp_path: Path, make_runner: Callable[..., BatchRunner]) -> Iterator[tuple[BatchRunner, Any, Path]]:
    """A runner woken by the simulator's signed webhooks (two 5-line shards of 100 s each): (runner, receiver,
    requests file). The receiver's server runs for the block."""
    from ratepilot.protocol.webhooks import new_secret
    from ratepilot.webhooks import ReceiverServer, WebhookReceiver

    secret = new_secret()
    receiver = WebhookReceiver(secret)
    with ReceiverServer(receiver) as server:
        runner = make_runner(
            config=BatchConfig(max_requests=5),
            longrun=LongrunConfig(batch_lines_per_second=0.05, webhook_url=server.url, webhook_secret=secret),
            receiver=receiver,
        )
        yield runner, receiver, write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(10)])
