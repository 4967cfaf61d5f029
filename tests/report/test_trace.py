"""The trace sidecar: what the runners record per request (and the limits over time), next to the results file.

Online: the real runner through the Pilot's transport to a simulator on a FakeClock shared with the Pilot (so
backoffs and limiter waits cost no real time), with injected 503s (retries), refusals (429s: the minute enforced
per second) and requests for a model that does not exist (404s). Batch: the Batch pipeline's collect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.report import load_job
from ratepilot.retry import RetryPolicy
from ratepilot.run import RunOptions, run_job
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.config import FaultConfig
from ratepilot.sim.longrun import LongrunConfig, configure
from ratepilot.trace import LimitSnapshot, RequestRecord, Segment, SegmentEnd, read_trace, trace_path

KEY = "test-trace-key-0123456789abcdef"  # the simulator takes any non-empty key; long enough to be found if leaked


def _chat(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"hearing {i}: the nominee. yes"}],
        "max_tokens": 5,
    }
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def _requests(path: Path, n: int, *, bad_every: int = 0) -> Path:
    with open(path, "wb") as fh:
        for i in range(n):
            model = "gpt-no-such-model" if bad_every and i % bad_every == bad_every - 1 else "gpt-4o-mini"
            fh.write(orjson.dumps(_chat(i, model)) + b"\n")
    return path


@pytest.fixture
def fake_clock_sim() -> Iterator[tuple[Simulator, FakeClock]]:
    clock = FakeClock()
    config = SimConfig.realistic(
        rpm=600, tpm=1_000_000, responder="classify", faults=FaultConfig(error_503=0.1), seed=3
    )
    with Simulator(config, clock=clock) as sim:
        yield sim, clock


def _run(
    sim: Simulator, clock: FakeClock, requests: Path, out: Path, budget_usd: float | None = None, **options: Any
) -> Any:
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(5), budget_usd=budget_usd)
    try:
        opts = RunOptions(requests=requests, output=out, base_url=sim.base_url, api_key=KEY, cache=False, **options)
        return run_job(opts, pilot=pilot)
    finally:
        pilot.close()


@pytest.mark.parametrize("tier", [None, "standard"])  # --tier wraps the sender in the router: same trace
def test_an_online_run_traces_every_request_with_its_attempts_waits_tokens_cost_and_the_limits(
    fake_clock_sim: tuple[Simulator, FakeClock], tmp_path: Path, tier: str | None
) -> None:
    sim, clock = fake_clock_sim
    out = tmp_path / "results.jsonl"
    summary = _run(sim, clock, _requests(tmp_path / "req.jsonl", 120, bad_every=10), out, tier=tier)
    assert summary.done == 120 and summary.http_errors == 12, summary

    raw = trace_path(out).read_bytes()
    assert KEY not in raw.decode() and b"Bearer" not in raw  # codes and numbers only: never a key
    events = list(read_trace(trace_path(out)))
    segments = [e for e in events if isinstance(e, Segment)]
    records = [e for e in events if isinstance(e, RequestRecord)]
    snapshots = [e for e in events if isinstance(e, LimitSnapshot)]
    assert len(segments) == 1 and segments[0].mode == "online" and segments[0].job.startswith("sha256:")
    assert isinstance(events[-1], SegmentEnd) and events[-1].stop is None
    assert Counter(r.custom_id for r in records) == Counter(f"req-{i}" for i in range(120))  # one line each

    ok = [r for r in records if r.ok]
    missing = [r for r in records if not r.ok]
    assert len(ok) == 108 and all(r.prompt > 0 and r.completion > 0 and r.cost > 0 for r in ok)
    assert all(r.model == "gpt-4o-mini" and r.status == 200 for r in ok)
    assert {(r.status, r.error, r.model) for r in missing} == {(404, "model_not_found", "gpt-no-such-model")}
    assert sum(r.cost for r in records) == pytest.approx(summary.cost_usd, rel=1e-3)
    # The 503s were retried (attempts), and the per-second windows made some requests wait.
    retried = [r for r in records if r.attempts > 1]
    assert retried and sum(r.attempts - 1 for r in records) == summary.retries
    assert any(r.waited > 0 for r in records)
    assert all(r.at is not None and r.duration is not None and r.duration >= 0 for r in records)
    assert snapshots and snapshots[-1].requests is not None and snapshots[-1].requests[0] == 600
    # The Pilot's counters, snapshotted (429s are not always drawn here: the limiter avoids most of them).
    assert snapshots[-1].http is not None and snapshots[-1].http[2] == summary.rate_limited
    assert snapshots[-1].http[0] == summary.http_requests


def test_a_rerun_appends_a_segment_and_overwrite_starts_a_new_trace(
    fake_clock_sim: tuple[Simulator, FakeClock], tmp_path: Path
) -> None:
    sim, clock = fake_clock_sim
    out = tmp_path / "results.jsonl"
    requests = _requests(tmp_path / "req.jsonl", 40)
    stopped = _run(sim, clock, requests, out, budget_usd=0.00005)  # stops when the budget is reached
    assert stopped.stop == "budget" and 0 < stopped.done < 40
    _run(sim, clock, requests, out)  # the rerun resumes: its own segment, after the first
    events = list(read_trace(trace_path(out)))
    assert [type(e).__name__ for e in events if not isinstance(e, RequestRecord | LimitSnapshot)] == [
        "Segment",
        "SegmentEnd",
        "Segment",
        "SegmentEnd",
    ]
    assert [e.stop for e in events if isinstance(e, SegmentEnd)] == ["budget", None]
    answered = Counter(e.custom_id for e in events if isinstance(e, RequestRecord) and e.status)
    assert answered == Counter(f"req-{i}" for i in range(40))  # each asked once over the two runs

    grown = _requests(tmp_path / "req.jsonl", 45)  # the same file, grown: another job for the same results
    _run(sim, clock, grown, out, overwrite=True)
    events = list(read_trace(trace_path(out)))
    assert sum(isinstance(e, Segment) for e in events) == 1  # the earlier job's trace went with its results
    assert sum(isinstance(e, RequestRecord) for e in events) == 45


def test_a_batch_jobs_report_comes_from_its_results_at_the_batch_price(tmp_path: Path) -> None:
    # A batch collect writes no trace (its lines have no timing; writing one cost collect a third of its speed):
    # the report reads the results, and prices them at the Batch API's half price.
    clock = FakeClock()
    with Simulator(SimConfig(latency_ms=0), clock=clock) as sim:
        configure(sim.state, LongrunConfig(batch_line_failure_rate=0.2, seed=4))
        requests = tmp_path / "req.jsonl"
        with open(requests, "wb") as fh:
            for i in range(30):
                fh.write(orjson.dumps(_chat(i)) + b"\n")
        client = OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0)
        config = BatchConfig(max_requests=10, poll_interval=1.0, max_attempts=1)
        with client, BatchRunner(client, state_dir=tmp_path / "state", config=config, clock=clock) as runner:
            runner.run(requests, tmp_path / "results.jsonl", name="traced")
        billed = sum(u["cost_usd"] for u in sim.stats()["usage"].values())
    results = tmp_path / "results.jsonl"
    assert not trace_path(results).exists()
    view = load_job(results)
    assert view.done == 30 and view.succeeded and view.http_errors + view.error_lines == 30 - view.succeeded
    assert view.failures  # by code, with examples
    assert view.cost_usd == pytest.approx(billed, rel=1e-3)  # what the server billed: the Batch price


def test_reading_skips_what_it_cannot_use(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.trace"
    path.write_bytes(
        b'{"k":"run","v":1,"mode":"online","t0":1000.0}\n'
        b'{"i":"a","t":1.5,"d":0.5,"s":200,"m":"m","p":3,"o":1,"c":0.01}\n'
        b"not json\n"
        b'{"k":"future-kind"}\n'
        b'{"k":"run","v":99,"mode":"online","t0":5}\n'
        b'{"i":"b","t":2.0,"s":0,"e":"no_answer","m":"m"}\n'
        b'{"i":"torn'
    )
    records = [e for e in read_trace(path) if isinstance(e, RequestRecord)]
    assert [(r.custom_id, r.at, r.ok, r.attempts) for r in records] == [("a", 1001.5, True, 1), ("b", 1002.0, False, 1)]


def test_sidecar_writes_are_buffered_until_the_flush(tmp_path: Path) -> None:
    from ratepilot.results import open_results
    from ratepilot.trace import TraceWriter

    open_results(tmp_path / "r.jsonl", "job-1").close()
    clock = FakeClock()
    trace = TraceWriter.open(tmp_path / "r.jsonl", clock=clock)
    for i in range(100):
        trace.request(f"c{i}", started=clock.now(), ended=clock.now() + 0.25, status=200, model="m", prompt=5)
    assert trace_path(tmp_path / "r.jsonl").stat().st_size == 0  # the hot path only appended to a list
    trace.flush()
    trace.close()
    lines = trace_path(tmp_path / "r.jsonl").read_bytes().splitlines()
    assert len(lines) == 102 and max(len(line) for line in lines[1:-1]) < 80  # compact: a short line a request
