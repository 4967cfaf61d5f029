"""kill -9 in the middle of a run, rerun: every request is answered exactly once in the result file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ratepilot.results import read_results
from ratepilot.run import ExitCode, RunOptions, run_job
from ratepilot.sim import Simulator

from .conftest import KEY

N = 300


def test_kill_9_mid_run_then_rerun_answers_each_request_exactly_once(
    make_sim: Callable[..., Simulator],
    requests_file: Callable[..., Path],
    wait_for_lines: Callable[[Path, int, float], int],
    tmp_path: Path,
) -> None:
    slow = make_sim(rpm=100)  # the first 100 at once, then 100/min: the run is mid-way for a long time
    req = requests_file(N)
    out = tmp_path / "out.jsonl"
    cli = [sys.executable, "-c", "from ratepilot.cli import main; main()"]
    proc = subprocess.Popen(
        [*cli, "run", str(req), "-o", str(out), "--base-url", slow.base_url, "--quiet"],
        env={**os.environ, "OPENAI_API_KEY": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen = wait_for_lines(out, 101, 120.0)
        assert seen >= 101, f"the run never got going ({seen} lines)"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = Counter(line["custom_id"] for line in read_results(out))
    assert 100 < len(before) < N and max(before.values()) == 1

    fast = make_sim()
    summary = run_job(RunOptions(requests=req, output=out, base_url=fast.base_url, api_key=KEY))
    assert summary.exit_code == ExitCode.OK and summary.already_done == len(before)
    after = Counter(line["custom_id"] for line in read_results(out))
    assert after == Counter({f"req-{i}": 1 for i in range(N)})
    # The rerun asked only what the killed run had not made durable.
    assert fast.stats()["requests"]["total"] == N - len(before)
