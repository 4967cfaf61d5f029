"""One owner per results file: a second `ratepilot run` on it stops at once (exit 5), naming the holder; the
lock dies with its process (kill -9 leaves nothing stale). Real processes, as the case is about processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ratepilot.joblock import JobLocked, job_lock, lock_path
from ratepilot.results import read_results
from ratepilot.run import ExitCode, RunOptions, run_job
from ratepilot.sim import Simulator

from .conftest import KEY

N = 300
CLI = [sys.executable, "-c", "from ratepilot.cli import main; main()"]


def test_a_second_run_on_the_same_results_file_exits_5_and_sends_nothing(
    make_sim: Callable[..., Simulator],
    requests_file: Callable[..., Path],
    wait_for_lines: Callable[[Path, int, float], int],
    tmp_path: Path,
) -> None:
    slow = make_sim(rpm=100)  # the first 100 at once, then 100/min: the first run holds the file for minutes
    req = requests_file(N)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    first = subprocess.Popen(
        [*CLI, "run", str(req), "-o", str(out), "--base-url", slow.base_url, "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_lines(out, 101, 120.0) >= 101, "the first run never got going"
        second = subprocess.run(
            [*CLI, "run", str(req), "-o", str(out), "--base-url", slow.base_url, "--quiet"],
            env={**env, "OPENAI_API_KEY": "second-run-key-9999"},  # its own key (any non-empty key): countable
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == ExitCode.CONFLICT, second.stderr
        said = " ".join(second.stderr.split())  # the console wraps long lines
        assert f"pid {first.pid}" in said and "is in use by another ratepilot process" in said
        assert "sk-...9999" not in slow.stats()["keys"]  # the second run sent nothing
    finally:
        first.send_signal(signal.SIGKILL)  # the lock dies with it
        first.wait()
    done = Counter(line["custom_id"] for line in read_results(out))
    fast = make_sim()
    summary = run_job(RunOptions(requests=req, output=out, base_url=fast.base_url, api_key=KEY))
    assert summary.exit_code == ExitCode.OK and summary.already_done == len(done)
    assert Counter(line["custom_id"] for line in read_results(out)) == Counter({f"req-{i}": 1 for i in range(N)})


def test_the_lock_is_exclusive_between_open_files_and_released_on_exit(tmp_path: Path) -> None:
    path = lock_path(tmp_path / "out.jsonl")

    def take() -> None:
        with job_lock(path, "results file out.jsonl"):
            pass

    with job_lock(path, "results file out.jsonl"), pytest.raises(JobLocked, match=rf"pid {os.getpid()} on "):
        take()  # a second open file description: refused, naming the holder
    take()  # released: taken again
