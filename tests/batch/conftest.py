"""Fixtures for the Batch pipeline: a simulator on a fake clock, request files, a runner factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.batch.state import ShardRecord, ShardState
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


def server_batches(sim: Simulator) -> list[dict[str, Any]]:
    """Every batch the simulator holds, whichever job created it."""
    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        return [b.model_dump() for b in client.batches.list(limit=100)]


def endpoint_calls(sim: Simulator, endpoint: str) -> int:
    return int(sim.stats()["requests"]["by_endpoint"].get(endpoint, 0))


def shard_record(**kw: Any) -> ShardRecord:
    """A submitted shard of 100 requests (job 1, shard 0, model "m"); ``kw`` overrides any field."""
    base: dict[str, Any] = dict(job=1, shard=0, model="m", url="/v1/chat/completions", round=0, path="p")
    base.update(n_requests=100, n_bytes=1, est_tokens=1, state=ShardState.SUBMITTED.value, total=100)
    base.update(kw)
    return ShardRecord(**base)


def connection_error(cause: BaseException) -> openai.APIConnectionError:
    """What the SDK raises when the Pilot's transport raised ``cause`` inside the HTTP call."""
    exc = openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1/v1/files"))
    exc.__cause__ = cause
    return exc


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
