"""How many requests per second one ``ratepilot run`` process can send, whatever the account's limits.

    python bench/ceiling.py --quick      # 2,000 requests per store (~30 s)
    python bench/ceiling.py              # 10,000 requests per store

One process runs the job (``ratepilot.run.arun_job``: the online runner, the Pilot's transport, the limiter) against
a simulator in another process whose limits are out of reach (10M RPM) and which answers at once, so nothing but
the runner's own work (and the simulator's) sets the pace: that is the ceiling above which one process cannot go,
and past which a job needs several processes (``--store sqlite:///...`` on one host, ``redis://`` across hosts) or
a cluster (``ratepilot.ray``). Once per limiter store: ``memory://``, ``sqlite:///`` and ``redis://`` (a
redis-server of our own on a free port when the binary is there; else ``--redis``).

Per store: ``rps`` = requests answered per second of wall time, ``cpu_ms_per_request`` = the runner process's CPU
(user + system) per request. On this 2-core machine the simulator takes most of the other core, so ``rps`` is the
ceiling of one process beside a busy neighbour, and ``1000 / cpu_ms_per_request`` what one free core could do.
The last line of output is one JSON object: ``{"memory": {"rps", "cpu_ms_per_request"}, "sqlite": {...},
"redis": {...}, "requests": N}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent

_SIM_SCRIPT = textwrap.dedent(
    """
    import sys
    from ratepilot.sim import SimConfig, Simulator
    config = SimConfig(rpm=10_000_000, tpm=2_000_000_000, responder="fixed", fixed_text="ok")
    with Simulator(config) as sim:
        print(sim.base_url, flush=True)
        sys.stdin.read()  # until the bench closes our stdin
    """
)


def write_requests(path: Path, n: int) -> None:
    with open(path, "wb") as fh:
        for i in range(n):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": 2}
            fh.write(
                orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
            )
            fh.write(b"\n")


def one_run(requests: Path, out: Path, base_url: str, store: str, api_key: str, n: int) -> dict[str, Any]:
    from ratepilot.run import RunOptions, arun_job

    options = RunOptions(requests, out, base_url=base_url, api_key=api_key, cache=False, store=store)
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = asyncio.run(arun_job(options))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if summary.succeeded != n:
        raise RuntimeError(f"{store}: {summary.succeeded} of {n} succeeded ({summary.message})")
    return {"rps": round(n / wall, 1), "cpu_ms_per_request": round(cpu * 1000 / n, 3), "seconds": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 requests per store instead of 10,000")
    parser.add_argument("--redis", default=None, help="Redis URL (default: a redis-server of our own)")
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 10_000

    sys.path.insert(0, str(HERE))
    from ray_data import start_redis

    redis_url = args.redis or start_redis() or "redis://127.0.0.1:6379/0"
    workdir = Path(tempfile.mkdtemp(prefix="ratepilot-bench-ceiling-"))
    requests = workdir / "requests.jsonl"
    write_requests(requests, n)
    sim = subprocess.Popen(
        [sys.executable, "-c", _SIM_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    result: dict[str, Any] = {}
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        stores = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{workdir / 'limits.db'}",
            "redis": f"{redis_url}?prefix=rpbench:ceiling:{uuid.uuid4().hex}:",
        }
        # Each store on its own key: a fresh organization in the simulator, a fresh scope in the limiter.
        for name, store in stores.items():
            out = workdir / f"results-{name}.jsonl"
            result[name] = one_run(requests, out, base_url, store, f"bench-key-ceiling-{name}", n)
            print(f"{name:7} {json.dumps(result[name])}")
    finally:
        assert sim.stdin is not None
        sim.stdin.close()
        sim.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps({**{k: {m: v[m] for m in ("rps", "cpu_ms_per_request")} for k, v in result.items()}, "requests": n})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
