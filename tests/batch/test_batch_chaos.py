"""Chaos, bounded: `ratepilot batch submit --wait` SIGKILLed at random steps (a seeded draw of crash point and
of which occurrence of it) while the server injects 500s and dropped connections, then rerun until it exits.
Every request is answered exactly once, in input order; no shard ever has two batches; and the server created
at most the job's batches, although creates answered 500 or were cut off after the server acted."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratepilot.batch.crash import CRASH_ENV, CRASH_POINTS
from ratepilot.sim import FaultConfig, SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import API_KEY, chat_line, read_results, write_jsonl
from .test_batch_crash import Zygote

N, PER_SHARD, KILLS = 45, 3, 8


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path)
    yield z
    z.close()


def test_random_kills_with_server_faults_never_pay_twice(zygote: Zygote, tmp_path: Path) -> None:
    rng = random.Random(5)
    faults = FaultConfig(error_500=0.03, drop=0.02, all_endpoints=True)  # uploads and creates too
    lines = [chat_line(i) for i in range(N)]
    requests = write_jsonl(tmp_path / "requests.jsonl", lines)
    with Simulator(SimConfig(latency_ms=0, faults=faults, seed=9)) as sim:
        server = configure(sim.state, LongrunConfig(time_scale=200.0, batch_lines_per_second=50.0, seed=3))
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": sim.base_url}
        env["RATEPILOT_HOME"] = str(tmp_path / "state")
        env.pop(CRASH_ENV, None)
        kills, jobs = 0, 0
        while kills < KILLS:  # jobs of the same input, each killed at drawn steps until a run finishes it
            jobs += 1
            name, results = f"chaos-{jobs}", tmp_path / f"results-{jobs}.jsonl"
            command = ["batch", "submit", str(requests), "--name", name, "--wait", "-o", str(results)]
            command += ["--max-requests", str(PER_SHARD), "--poll-interval", "0.01"]
            while True:
                # The n-th time the run reaches a drawn step (upload, create, collect... happen once per shard).
                crash = f"{rng.choice(CRASH_POINTS)}:{rng.randint(1, 4)}"
                code, output = zygote.run(command, {**env, CRASH_ENV: crash} if kills < KILLS else env)
                if code != -signal.SIGKILL:
                    break
                kills += 1
            assert code == 0, (crash, code, output[-2000:])  # finished (the drawn step was not reached)
            code, output = zygote.run(command, env)  # and a rerun after success changes nothing
            assert code == 0, output[-2000:]

            got = read_results(results)
            assert [r["custom_id"] for r in got] == [ln["custom_id"] for ln in lines]  # each once, in input order
            assert all(r["response"]["status_code"] == 200 for r in got)
            batches = [b for b in server.batches.every() if (b.metadata or {}).get("ratepilot_job") == name]
            per_shard = Counter(b.metadata["ratepilot_shard"] for b in batches if b.metadata)
            assert len(per_shard) == -(-N // PER_SHARD) and set(per_shard.values()) == {1}, per_shard  # no duplicate
        assert sim.stats()["faults"], "the server injected no fault: the test tested nothing"
