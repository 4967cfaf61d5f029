"""kill -9 the real CLI at every step, rerun the same command: no duplicate file or batch, no lost result.

The CLI runs in a separate process against a simulator started here (real clock, time scale 200: a batch takes
a few hundredths of a second): a child forked from a pre-imported helper process (``zygote.py``), so each run
skips the seconds of importing the SDK. ``RATEPILOT_BATCH_CRASH_AT`` makes the process SIGKILL itself at one exact step.
Each run crashes at the next step, so every rerun must first reconcile what the previous one left behind.

A crash of the machine, not only of the process: every rename (the materialized input, the downloads, the results
file) is made durable by fsyncing its directory.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from ratepilot.batch import BatchRunner
from ratepilot.batch.crash import CRASH_ENV, CRASH_POINTS
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import API_KEY, chat_line, read_results, write_jsonl

STEPS = [
    "during-plan",  # shard files written, plan not committed: the rerun plans again
    "after-plan",  # plan committed, nothing uploaded
    "after-upload-intent",  # intent committed, nothing uploaded yet
    "after-upload",  # file uploaded, id not recorded: the rerun must find it by name, not upload again
    "after-create-intent",  # create intent committed, no batch yet
    "after-create",  # batch created, id not recorded: the rerun must find it by metadata, not create again
    "during-collect",  # output downloaded, not indexed
    "during-cleanup",  # job finished, one input file deleted from the server: the rerun deletes the rest
    "during-collect-write",  # results written to .part, not renamed
]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
        configure(s.state, LongrunConfig(time_scale=200.0, batch_lines_per_second=50.0, seed=3))
        yield s


class Zygote:
    """Runs the CLI in forked children of one pre-imported subprocess (see ``zygote.py``)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.batch.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )

    def run(self, args: list[str], env: dict[str, str]) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.runs += 1
        out = self.tmp / f"run-{self.runs}.log"
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)  # a hung child fails the test, not the suite
        if not ready:
            self.proc.kill()
            raise AssertionError(f"CLI run {self.runs} did not finish: {out.read_text()[-2000:]}")
        answer = json.loads(self.proc.stdout.readline())
        return int(answer["returncode"]), out.read_text()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path)
    yield z
    z.close()


def test_kill_9_at_every_step_then_rerun(zygote: Zygote, sim: Simulator, tmp_path: Path) -> None:
    lines = [chat_line(i, "gpt-4.1-nano" if i >= 10 else "gpt-4o-mini") for i in range(14)]
    requests = write_jsonl(tmp_path / "requests.jsonl", lines)
    results = tmp_path / "results.jsonl"
    env = {
        **os.environ,
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": sim.base_url,
        "RATEPILOT_HOME": str(tmp_path / "state"),
    }
    env.pop(CRASH_ENV, None)
    command = [
        "batch",
        "submit",
        str(requests),
        "--name",
        "crashy",
        "--wait",
        "-o",
        str(results),
        "--max-requests",
        "4",
        "--poll-interval",
        "0.01",
        "--json",
    ]

    assert list(CRASH_POINTS) == STEPS  # every crash point of the driver is exercised
    for step in STEPS:
        code, output = zygote.run(command, {**env, CRASH_ENV: step})
        assert code == -signal.SIGKILL, (step, code, output[-2000:])

    code, output = zygote.run(command, env)
    assert code == 0, output[-2000:]

    got = read_results(results)
    assert [r["custom_id"] for r in got] == [ln["custom_id"] for ln in lines]  # each once, input order
    assert all(r["response"]["status_code"] == 200 for r in got)

    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        batches = [b for b in client.batches.list(limit=100) if (b.metadata or {}).get("ratepilot_job") == "crashy"]
        files = [f.filename for f in client.files.list(purpose="batch")]
    per_shard = Counter(b.metadata["ratepilot_shard"] for b in batches if b.metadata)
    assert sorted(per_shard) == ["0", "1", "2", "3"] and set(per_shard.values()) == {1}  # never a duplicate batch
    # Every upload was adopted by its shard (a duplicate would be left over) and deleted once the job was done.
    assert files == []

    # And a rerun after success changes nothing on the server.
    code, output = zygote.run(command, env)
    assert code == 0, output[-2000:]
    with OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0) as client:
        assert len(list(client.batches.list(limit=100))) == len(batches)


def _fsynced_directories(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every directory fsynced from now on, as (device, inode), whichever module asks for the fsync."""
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        info = os.fstat(fd if isinstance(fd, int) else fd.fileno())
        if stat.S_ISDIR(info.st_mode):
            synced.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _identity(directory: Path) -> tuple[int, int]:
    info = directory.stat()
    return (info.st_dev, info.st_ino)


def test_renames_are_made_durable(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _fsynced_directories(monkeypatch)
    runner = make_runner()
    name = runner.submit(iter([chat_line(i) for i in range(3)]), name="dur").name  # materialized input
    inputs = runner.state_dir / "batches" / "_inputs"
    assert _identity(inputs) in synced
    runner.wait(name)
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    runner.collect(name, out)
    assert _identity(out.parent) in synced  # the results file
    assert _identity(runner.state_dir / "batches" / name) in synced  # the downloads
