"""Batch pipeline at scale: validate + shard 1,000,000 requests, and collect 1,000,000 results, with bounded memory.

Three measured phases, each in its own subprocess so that its peak RSS (``resource.getrusage``) is its own:

1. ``prepare``: validate every line and write the shard files + the SQLite results index
   (``BatchRunner.prepare``; nothing is uploaded). Throughput in MB/s of input.
2. ``collect``: index the batches' output files (one per shard, lines in shuffled order as the API returns
   them) and write the results file in input order (the code path of ``BatchRunner.collect`` after the
   downloads: ``index_result_file`` + ``write_ordered_results``). Checked: every custom_id once, in order.
3. ``e2e``: a smaller job end to end through the simulator (upload, create, poll, download, collect), so the
   HTTP path is exercised in the same run; the 1M phases run locally because the simulator keeps files and
   batches in memory and executes every line through its responders.

Usage: ``python bench/batch_scale.py [--requests 1000000] [--quick]``. Last line: one JSON object with
``mb_per_s`` (prepare), ``peak_rss_mb`` (the larger of the two 1M phases; prepare counts its parse workers too;
the small e2e phase hosts the simulator in its own memory and is reported apart), and per-phase figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

MODELS = ("gpt-4o-mini", "gpt-4.1-nano")
PROMPT = (
    "Classify the following hearing transcript excerpt. Answer YES if it is a nomination hearing, NO otherwise. "
    "Excerpt: The committee will come to order. Today we consider the nomination of the candidate to serve as "
    "a judge of the district court. Senator, you are recognized for your opening statement on the record. "
)


def generate(path: Path, n: int) -> int:
    """A realistic chat-completions requests file (~900 bytes a line); returns its size in bytes."""
    with open(path, "wb", buffering=1 << 20) as fh:
        for i in range(n):
            body = {
                "model": MODELS[i % len(MODELS)],
                "messages": [
                    {"role": "system", "content": "You are a careful classifier. Reply with one word."},
                    {"role": "user", "content": f"[{i}] {PROMPT}{PROMPT[: (i * 7) % 300]}"},
                ],
                "max_tokens": 2,
                "temperature": 0,
            }
            line = {"custom_id": f"req-{i:08d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _client() -> Any:
    from openai import OpenAI

    # prepare/collect phases never call the API; a client is required by the runner's constructor only.
    return OpenAI(api_key="sk-test-bench", base_url="http://127.0.0.1:9/v1")


def phase_prepare(workdir: Path, requests: Path, workers: int | None) -> dict[str, Any]:
    from ratepilot.batch import BatchConfig, BatchRunner
    from ratepilot.batch.prepare import PARALLEL_MIN_BYTES, default_workers

    config = BatchConfig(parse_workers=workers)
    with _client() as client, BatchRunner(client, state_dir=workdir / "state", config=config) as runner:
        size = requests.stat().st_size
        start = time.perf_counter()
        cpu = time.process_time()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        job = runner.prepare(requests, name="scale")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        shards = runner.store.shards(job)
    n_workers = workers if workers is not None else default_workers()
    if n_workers <= 1 or (size < PARALLEL_MIN_BYTES and workers is None):  # prepare's rule: parsed inline
        n_workers = 0
    return {
        "phase": "prepare",
        "requests": job.total,
        "bytes": size,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "planner_cpu_us_per_line": round(cpu / max(job.total, 1) * 1e6, 1),
        "worker_cpu_s": round(worker_cpu, 2),
        # Throughput per CPU-second of every process involved: what the code does when it has the CPUs to
        # itself (the wall-clock figure depends on how busy the machine is).
        "mb_per_cpu_s": round(size / max(cpu + worker_cpu, 1e-9) / 1e6, 1),
        "workers": workers,
        "shards": len(shards),
        "planner_peak_rss_mb": round(_rss_mb(), 1),
        # The parse workers are processes of their own: the job's memory is the planner's plus theirs (an upper
        # bound: every worker at the largest worker's peak, all at the planner's peak moment).
        "worker_peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        "peak_rss_mb": round(_rss_mb() + n_workers * after.ru_maxrss / 1024, 1),
    }


def _fake_outputs(runner: Any, job: Any) -> None:
    """What the API would return per shard: one output line per request, in shuffled order (not timed)."""
    from ratepilot.batch.state import ShardState

    rng = random.Random(1)
    for shard in runner.store.shards(job):
        ids = []
        with open(shard.path, "rb") as fh:
            for raw in fh:
                ids.append(orjson.loads(raw)["custom_id"])
        rng.shuffle(ids)
        out = runner._job_dir(job) / f"output-{shard.shard:05d}-1.jsonl"
        with open(out, "wb", buffering=1 << 20) as fh:
            for k, cid in enumerate(ids):
                body = {
                    "id": f"chatcmpl-{k}",
                    "object": "chat.completion",
                    "model": shard.model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "NO"}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 180, "completion_tokens": 1, "total_tokens": 181},
                }
                line = {
                    "id": f"batch_req_{k}",
                    "custom_id": cid,
                    "response": {"status_code": 200, "request_id": f"req_{k}", "body": body},
                    "error": None,
                }
                fh.write(orjson.dumps(line) + b"\n")
        runner.store.update_shard(shard, state=ShardState.FINISHED.value, batch_status="completed", submit_no=1)


def phase_collect(workdir: Path, output: Path) -> dict[str, Any]:
    from ratepilot.batch import BatchRunner
    from ratepilot.batch.collect import index_result_file, write_ordered_results
    from ratepilot.batch.state import ShardState

    with _client() as client, BatchRunner(client, state_dir=workdir / "state") as runner:
        job = runner.store.get_job("scale")
        assert job is not None
        _fake_outputs(runner, job)
        base_rss = _rss_mb()
        start = time.perf_counter()
        size = 0
        for shard in runner.store.shards(job):
            path = runner._job_dir(job) / f"output-{shard.shard:05d}-1.jsonl"
            size += path.stat().st_size
            with runner.store.bulk():
                file_no = runner.store.add_file(job, str(path), "output")
                index_result_file(runner.store, job, shard.shard, file_no, path)
                runner.store.update_shard(shard, state=ShardState.COLLECTED.value)
        summary = write_ordered_results(runner.store, job, output)
        elapsed = time.perf_counter() - start
    # Verify: every custom_id once, in input order (streamed, constant memory).
    expected = 0
    with open(output, "rb", buffering=1 << 20) as fh:
        for raw in fh:
            assert orjson.loads(raw)["custom_id"] == f"req-{expected:08d}", expected
            expected += 1
    assert expected == summary.written == summary.done
    return {
        "phase": "collect",
        "results": summary.written,
        "bytes": size,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "rss_before_collect_mb": round(base_rss, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "in_order": True,
    }


def phase_e2e(workdir: Path, n: int) -> dict[str, Any]:
    from openai import OpenAI

    from ratepilot.batch import BatchConfig, BatchRunner
    from ratepilot.clock import FakeClock
    from ratepilot.sim import SimConfig, Simulator
    from ratepilot.sim.longrun import LongrunConfig, configure

    requests = workdir / "e2e.jsonl"
    generate(requests, n)
    clock = FakeClock()
    with Simulator(SimConfig(latency_ms=0), clock=clock) as sim:
        configure(sim.state, LongrunConfig(batch_lines_per_second=100.0, batch_line_failure_rate=0.01, seed=5))
        with (
            OpenAI(base_url=sim.base_url, api_key="sk-test-bench", max_retries=0) as client,
            BatchRunner(
                client, state_dir=workdir / "e2e-state", config=BatchConfig(max_requests=n // 4 + 1), clock=clock
            ) as runner,
        ):
            start = time.perf_counter()
            summary = runner.run(requests, workdir / "e2e-results.jsonl", name="e2e")
            elapsed = time.perf_counter() - start
        stats = sim.stats()["requests"]["by_endpoint"]
    return {
        "phase": "e2e",
        "requests": n,
        "seconds": round(elapsed, 3),
        "complete": summary.complete,
        "api_calls": stats,
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def _child(phase: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", phase, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 requests (under a minute)")
    parser.add_argument("--e2e-requests", type=int, default=2_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="parse workers (default: auto)")
    parser.add_argument("--phase", choices=("prepare", "collect", "e2e"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        workdir = args.workdir
        if args.phase == "prepare":
            out = phase_prepare(workdir, workdir / "requests.jsonl", args.workers)
        elif args.phase == "collect":
            out = phase_collect(workdir, workdir / "results.jsonl")
        else:
            out = phase_e2e(workdir, args.e2e_requests)
        print(json.dumps(out))
        return

    n = 100_000 if args.quick else args.requests
    load_before = os.getloadavg()  # the machine is shared: a figure means little without how busy it was
    e2e_n = 500 if args.quick else args.e2e_requests
    with tempfile.TemporaryDirectory(prefix="rp-batch-scale-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        size = generate(workdir / "requests.jsonl", n)
        print(f"generated {n:,} requests, {size / 1e6:,.1f} MB in {time.perf_counter() - t:.1f}s", flush=True)
        extra = [] if args.workers is None else ["--workers", str(args.workers)]
        prepare = _child("prepare", "--workdir", str(workdir), *extra)
        print(json.dumps(prepare), flush=True)
        collect = _child("collect", "--workdir", str(workdir))
        print(json.dumps(collect), flush=True)
        e2e = _child("e2e", "--workdir", str(workdir), "--e2e-requests", str(e2e_n))
        print(json.dumps(e2e), flush=True)
    peak = max(prepare["peak_rss_mb"], collect["peak_rss_mb"])
    print(
        json.dumps(
            {
                "bench": "batch_scale",
                "requests": n,
                "input_mb": round(size / 1e6, 1),
                "mb_per_s": prepare["mb_per_s"],
                "peak_rss_mb": peak,
                "prepare": prepare,
                "collect": collect,
                "e2e": e2e,
                "targets": {"mb_per_s": ">= 50", "peak_rss_mb": "<= 300"},
                "ok": prepare["mb_per_s"] >= 50 and peak <= 300 and e2e["complete"],
                "cpus": os.cpu_count(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
