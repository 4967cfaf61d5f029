"""Parsing worker processes: a dead worker is a clear error with nothing left behind, and workers never run the
caller's ``__main__`` again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

import ratepilot.batch.prepare as prepare_mod
from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.batch.prepare import ParseWorkerError

from .conftest import API_KEY, chat_line, write_jsonl


def _requests(tmp_path: Path, n: int = 2000) -> Path:
    return write_jsonl(tmp_path / "requests.jsonl", [chat_line(i) for i in range(n)])


def test_a_killed_worker_is_a_clear_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_mod, "CHUNK_BYTES", 4096)  # many blocks: the kill lands mid-plan
    requests = _requests(tmp_path)
    started: list[subprocess.Popen[bytes]] = []
    real_start, real_recv = prepare_mod._start_worker, prepare_mod.recv_message
    received = 0

    def start() -> subprocess.Popen[bytes]:
        started.append(real_start())
        return started[-1]

    def recv(stream: Any) -> Any:
        nonlocal received
        received += 1
        if received == 3:  # a few blocks in: one worker dies (kill -9, the OOM killer)
            os.kill(started[0].pid, signal.SIGKILL)
        return real_recv(stream)

    monkeypatch.setattr(prepare_mod, "_start_worker", start)
    monkeypatch.setattr(prepare_mod, "recv_message", recv)
    state = tmp_path / "state"
    with (
        OpenAI(base_url="http://127.0.0.1:9/v1", api_key=API_KEY) as client,
        BatchRunner(client, state_dir=state, config=BatchConfig(parse_workers=2)) as runner,
    ):
        with pytest.raises(ParseWorkerError) as err:
            runner.prepare(requests, name="killed")
        message = str(err.value)
        assert "a parsing worker process exited unexpectedly" in message and "SIGKILL" in message
        assert isinstance(err.value, RuntimeError)  # what it was before it had a class of its own
        assert len(started) == 2 and all(p.returncode is not None for p in started)  # every worker reaped
        assert runner.store.get_job("killed") is None
        assert not (state / "batches" / "killed").exists()  # no shard files
        monkeypatch.setattr(prepare_mod, "recv_message", real_recv)
        job = runner.prepare(requests, name="killed")  # the rerun plans it
        assert job.total == 2000
        ids = [
            orjson.loads(raw)["custom_id"]
            for shard in runner.store.shards(job)
            for raw in Path(shard.path).read_bytes().splitlines()
        ]
        assert ids == [f"req-{i:05d}" for i in range(2000)]
    assert all(p.returncode is not None for p in started[2:])


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    requests = _requests(tmp_path, 50)
    marker = tmp_path / "runs.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from openai import OpenAI\n"
        "from ratepilot.batch import BatchConfig, BatchRunner\n"
        f"with open({str(marker)!r}, 'a') as fh:\n"
        "    fh.write('ran\\n')\n"
        f"with OpenAI(base_url='http://127.0.0.1:9/v1', api_key={API_KEY!r}) as client:\n"
        f"    with BatchRunner(client, state_dir={str(tmp_path / 'state')!r}, "
        "config=BatchConfig(parse_workers=2)) as runner:\n"
        f"        print(runner.prepare({str(requests)!r}, name='unguarded').total)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.split() == [b"50"]
    assert marker.read_text() == "ran\n"  # once: the two workers did not run the script again


def test_workers_ignore_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group; the planner stops its workers (no traceback from each)."""
    proc = prepare_mod._start_worker()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        requests = _requests(tmp_path, 3)
        prepare_mod.send_message(proc.stdin, (str(requests), 0, requests.stat().st_size, 1, False, 20))
        assert prepare_mod.recv_message(proc.stdout).n_lines == 3  # started, and past its SIGINT setup
        proc.send_signal(signal.SIGINT)
        prepare_mod.send_message(proc.stdin, (str(requests), 0, requests.stat().st_size, 1, False, 20))
        assert prepare_mod.recv_message(proc.stdout).n_lines == 3  # still serving
    finally:
        prepare_mod._stop_workers([proc])
    assert proc.returncode == 0


def test_a_dead_worker_is_a_clean_cli_error() -> None:
    from ratepilot.cli.exits import classify_exit
    from ratepilot.exitcodes import ExitCode

    known = classify_exit(ParseWorkerError("a parsing worker process exited unexpectedly (exit code 1)"))
    assert known == (ExitCode.API_ERROR, "a parsing worker process exited unexpectedly (exit code 1)")  # no traceback


def test_default_workers_stay_within_the_memory_bound_on_a_large_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from ratepilot.batch import prepare

    monkeypatch.setattr(prepare.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert prepare.default_workers() == prepare.MAX_DEFAULT_WORKERS == 2  # each further worker: ~85 MB
    monkeypatch.setattr(prepare.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert prepare.default_workers() == 1
