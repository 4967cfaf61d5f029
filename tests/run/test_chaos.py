"""Chaos, bounded: `ratepilot run` killed with SIGKILL at random points while the server injects faults, then
rerun until done. Every request is answered exactly once in the results file, and the server answered (200)
at most the job plus, per kill, what a kill can lose between answer and fsync — the in-flight window and one
group commit's worth of answers (50 ms at the job's pace) — plus the answers the server's dropped connections
cut off."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ratepilot.results import read_results
from ratepilot.run import ExitCode
from ratepilot.sim import FaultConfig, Simulator

from .conftest import KEY

N = 400
KILLS = 4
WINDOW = 16  # --max-in-flight: what one kill can have answered but not yet written
PER_COMMIT = 8  # answers one 50 ms group commit can hold at 100/s, with room for the runner's jitter
CLI = [sys.executable, "-c", "from ratepilot.cli import main; main()"]


def test_random_kills_with_server_faults_lose_nothing_and_duplicate_nothing(
    make_sim: Callable[..., Simulator],
    requests_file: Callable[..., Path],
    wait_for_lines: Callable[[Path, int, float], int],
    tmp_path: Path,
) -> None:
    rng = random.Random(12)
    # 5% server errors, 2% dropped connections; 6,000 RPM enforced per second (100/s): the job takes seconds, and
    # one group commit (50 ms) holds at most ~5 answers.
    sim = make_sim(rpm=6_000, latency_ms=3, quantum_s=1.0, faults=FaultConfig(error_500=0.05, drop=0.02), seed=3)
    req = requests_file(N)
    out = tmp_path / "out.jsonl"
    args = [*CLI, "run", str(req), "-o", str(out), "--base-url", sim.base_url, "--quiet", "--no-cache"]
    args += ["--max-in-flight", str(WINDOW)]
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    for kill in range(KILLS):
        done = sum(1 for _ in read_results(out)) if out.exists() else 0
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            target = min(N - 1, done + rng.randint(20, 80))
            wait_for_lines(out, target, 60.0)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        lines = Counter(line["custom_id"] for line in read_results(out))
        assert max(lines.values()) == 1, f"a duplicate after kill {kill + 1}"
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == ExitCode.OK, final.stderr
    assert Counter(line["custom_id"] for line in read_results(out)) == Counter({f"req-{i}": 1 for i in range(N)})
    stats = sim.stats()
    # A dropped connection is a 200 the server began and the client never got (then asked again).
    dropped = stats["faults"].get("drop", 0)
    answered = stats["requests"]["by_status"].get("200", 0)
    assert answered <= N + KILLS * (WINDOW + PER_COMMIT) + dropped, (answered, dropped)
