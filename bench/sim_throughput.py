"""Sustained chat completions per second served by the simulator (high limits, zero latency).

The simulator runs exactly as in the tests (``Simulator`` = uvicorn in a background thread of this process);
the load comes from separate worker processes, each an asyncio HTTP/1.1 keep-alive client with many
connections (a raw client, so the measurement is the server's cost, not an SDK's). Every response is
checked to be a 200 with a body.

    .venv/bin/python bench/sim_throughput.py            # 20 s measured
    .venv/bin/python bench/sim_throughput.py --quick    # 4 s measured

Last line: ``{"req_per_s": ..., ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 16}
).encode()


def _request(host: str, port: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer sk-bench-00000001\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _connection(host: str, port: int, stop_at: float, window: tuple[float, float], counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = _request(host, port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            now = time.monotonic()
            if window[0] <= now < window[1]:
                if head.startswith(b"HTTP/1.1 200") and body:
                    counts[0] += 1
                    counts[2 + int(now - window[0])] += 1  # per-second bins
                else:
                    counts[1] += 1
    finally:
        writer.close()
        await writer.wait_closed()


async def _worker(host: str, port: int, connections: int, warmup: float, duration: float) -> dict[str, Any]:
    start = time.monotonic()
    window = (start + warmup, start + warmup + duration)
    counts = [0, 0] + [0] * (int(duration) + 1)
    cpu = time.process_time()
    await asyncio.gather(*(_connection(host, port, window[1], window, counts) for _ in range(connections)))
    cpu = time.process_time() - cpu
    return {
        "ok": counts[0],
        "errors": counts[1],
        "seconds": duration,
        "per_second": counts[2 : 2 + int(duration)],
        "client_cpu_s": cpu,
    }


def worker_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    result = runner(_worker(args.host, args.port, args.connections, args.warmup, args.duration))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 s measurement instead of 20 s")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=1, help="load-generating processes")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections per worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 4.0 if args.quick else 20.0
    if args.worker:
        worker_main(args)
        return

    from ratepilot.sim import SimConfig, Simulator

    config = SimConfig(rpm=1_000_000_000, tpm=1_000_000_000_000, latency_ms=0)
    with Simulator(config) as sim:
        print(f"simulator on {sim.base_url}; {args.workers} worker process(es) x {args.connections} connections")
        command = [sys.executable, __file__, "--worker", "--host", sim.host, "--port", str(sim.port)]
        command += ["--connections", str(args.connections), "--warmup", str(args.warmup)]
        command += ["--duration", str(args.duration)]
        before_requests = sim.stats()["requests"]["total"]
        cpu_before = time.process_time()  # this process only runs the server (the main thread just waits)
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=args.warmup + args.duration + 60)
            if proc.returncode != 0:
                raise SystemExit(f"worker failed with exit code {proc.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu_used = time.process_time() - cpu_before
        stats = sim.stats()
    served = stats["requests"]["total"] - before_requests
    cpu_us = cpu_used / max(1, served) * 1e6
    ok = sum(r["ok"] for r in results)
    errors = sum(r["errors"] for r in results)
    per_second = [sum(r["per_second"][i] for r in results) for i in range(int(args.duration))]
    summary = {
        "req_per_s": round(ok / args.duration, 1),
        # Whole seconds of the run: the machine is shared, so the spread says how much of it was contention.
        "per_second_median": statistics.median(per_second) if per_second else None,
        "per_second_best": max(per_second) if per_second else None,
        "ok": ok,
        "errors": errors,
        "seconds": args.duration,
        "workers": args.workers,
        "connections": args.connections * args.workers,
        "server_requests": served,
        # Server CPU per request, and what one dedicated core could serve: stable on a busy, shared machine.
        "server_cpu_us_per_req": round(cpu_us, 1),
        "client_cpu_us_per_req": round(sum(r["client_cpu_s"] for r in results) / max(1, served) * 1e6, 1),
        "req_per_s_per_core_cpu_bound": round(1e6 / cpu_us, 1) if cpu_us else None,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"{summary['req_per_s']} chat completions/s sustained ({ok} ok, {errors} errors in {args.duration}s)")
    print(f"server CPU {cpu_us:.0f} us/request -> {1e6 / cpu_us:.0f} req/s per dedicated core")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
