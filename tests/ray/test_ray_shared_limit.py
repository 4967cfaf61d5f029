"""Two Ray actors and an outside ``ratepilot run`` process, on one key, share one limit through Redis.

The simulator enforces the minute limit per second too (``quantum_s=1``), so any moment where the three
together went over the limit shows up as a refusal. The simulator's responder notes who was admitted when, so the
test also sees that the two jobs really overlapped, and what they admitted together in every second.
Real time (~10 s of traffic), but nothing waits on a clock: the run ends when the work is done.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from ray_helpers import KEY, result_lines, write_requests

from ratepilot.exitcodes import ExitCode
from ratepilot.sim import Simulator

pytestmark = [
    # Ray Data's own DataContext() sets three of its deprecated fields itself on creation (ray 2.60); the
    # warnings are about Ray's internals, not anything this code sets.
    pytest.mark.filterwarnings(r"ignore:`use_push_based_shuffle` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`use_polars` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`use_arrow_tensor_v2` is deprecated:DeprecationWarning"),
]

RPM = 1_800  # 30 requests per second, enforced per second
PER_JOB = 150


def test_two_actors_and_an_outside_run_stay_under_one_limit(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    from ratepilot.ray import PilotSettings, run_dataset

    admitted: list[tuple[float, str]] = []  # (time, "cli" | "ray") of every request the simulator answered
    lock = threading.Lock()

    def responder(endpoint: str, body: Mapping[str, Any]) -> str:
        who = str(body["messages"][0]["content"]).split()[0]
        with lock:
            admitted.append((time.monotonic(), who))
        return "ok"

    sim = make_sim(rpm=RPM, tpm=10_000_000, quantum_s=1.0, responder=responder)
    cli_requests = write_requests(tmp_path / "cli.jsonl", PER_JOB, tag="cli")
    ray_requests = write_requests(tmp_path / "ray.jsonl", PER_JOB, tag="ray")
    env = {**os.environ, "OPENAI_API_KEY": KEY, "RATEPILOT_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "ratepilot", "run", str(cli_requests), "-o", str(tmp_path / "cli-results.jsonl")]
    outside = subprocess.Popen(
        [*cli, "--base-url", sim.base_url, "--store", store, "--no-cache", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        report = run_dataset(
            ray_requests,
            tmp_path / "ray-results.jsonl",
            PilotSettings(store=store, base_url=sim.base_url, api_key=KEY),
            actors=2,
        )
        stdout, _ = outside.communicate(timeout=90)
    finally:
        if outside.poll() is None:
            outside.kill()
            outside.wait()

    summary = orjson.loads(stdout.splitlines()[-1])
    assert outside.returncode == ExitCode.OK and summary["succeeded"] == PER_JOB, summary
    assert report.exit_code == ExitCode.OK and report.succeeded == PER_JOB, report
    assert len(result_lines(tmp_path / "ray-results.jsonl")) == PER_JOB

    # They ran at the same time: both were being admitted through a common stretch of seconds.
    times = {who: [t for t, w in admitted if w == who] for who in ("cli", "ray")}
    start, end = max(min(times["cli"]), min(times["ray"])), min(max(times["cli"]), max(times["ray"]))
    assert end - start >= 1.0, f"the two jobs did not overlap: {start=} {end=}"
    # Together they stayed under the one limit. The server enforces it over every second (a bucket of one second's
    # refill), so an overrun shows up as refusals: the three processes' limiters, sharing one state in Redis,
    # caused hardly any (the first finding of the one-second window, or a moment of foreign traffic seen late).
    refused = sim.stats()["rate_limited"]
    assert refused["total"] <= 2 * PER_JOB * 2 // 100, refused  # <= 2 per 100 requests, over both jobs
    # And over the stretch they shared, what the two admitted together came to the limit's rate, not more: at most a
    # second's refill above rate x duration (the burst the server's one-second bucket holds).
    rate = RPM / 60
    together = sum(1 for t, _ in admitted if start <= t <= end)
    assert together <= rate * (end - start) + rate + 1, f"{together} admitted in {end - start:.1f} s at {rate:.0f}/s"
    assert together >= 0.7 * rate * (end - start), "sharing the limit, they still used it"
