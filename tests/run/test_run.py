"""The online runner against the real simulator, through the real SDK and the Pilot: errors that must not vanish
(an unexpected one is logged and leaves the job incomplete) and a key that must not show."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ratepilot.engine.sender import Answer, HttpSender
from ratepilot.limits.types import CostTooLarge
from ratepilot.requests import RequestLine, RequestsFileError
from ratepilot.results import ForeignResultsError, read_results
from ratepilot.run import ExitCode, RunOptions, arun_job, run_job
from ratepilot.sim import Simulator

from .conftest import KEY, SECRET


def _opts(req: Path, out: Path, sim: Simulator, **kw: object) -> RunOptions:
    return RunOptions(requests=req, output=out, base_url=sim.base_url, api_key=KEY, **kw)  # type: ignore[arg-type]


def _sent(sim: Simulator) -> int:
    return int(sim.stats()["requests"]["total"])


def _ids(out: Path) -> Counter[str]:
    return Counter(line["custom_id"] for line in read_results(out))


def test_run_answers_every_request_once_then_resumes_and_caches(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    req = requests_file(40)
    out = tmp_path / "out.jsonl"
    summary = run_job(_opts(req, out, sim))
    assert summary.exit_code == ExitCode.OK and summary.done == 40 and summary.succeeded == 40
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(40)})
    line = next(read_results(out))
    assert line["response"]["status_code"] == 200 and line["response"]["body"]["choices"][0]["message"]["content"]
    assert _sent(sim) == 40 and summary.cost_usd > 0

    again = run_job(_opts(req, out, sim))  # resume: nothing left to do, nothing sent
    assert again.already_done == 40 and again.answered == 0 and _sent(sim) == 40

    fresh = run_job(_opts(req, tmp_path / "out2.jsonl", sim))  # same requests, new output: all from the cache
    assert fresh.cache_hits == 40 and fresh.answered == 0 and _sent(sim) == 40
    assert fresh.saved_usd == pytest.approx(summary.cost_usd)
    assert _ids(tmp_path / "out2.jsonl") == _ids(out)

    nocache = run_job(_opts(req, tmp_path / "out3.jsonl", sim, cache=False))
    assert nocache.cache_hits == 0 and _sent(sim) == 80


def test_bad_lines_stop_before_anything_is_sent(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    dup = '{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "input": 1}}'
    req = requests_file(5, extra=["{not json", dup, '{"model": "gpt-4o-mini"}'])
    out = tmp_path / "out.jsonl"
    with pytest.raises(RequestsFileError) as info:
        run_job(_opts(req, out, sim))
    text = str(info.value)
    assert "3 invalid lines" in text and "line 6" in text and "line 7" in text and "line 8" in text
    assert "invalid JSON" in text
    assert _sent(sim) == 0 and not out.exists()  # nothing sent, nothing written

    summary = run_job(_opts(req, out, sim, skip_invalid=True))
    assert summary.invalid_skipped == 3 and summary.done == 5 and _sent(sim) == 5


def test_results_file_of_another_job_is_refused(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    out = tmp_path / "out.jsonl"
    run_job(_opts(requests_file(3, name="a.jsonl"), out, sim))
    other = requests_file(4, name="b.jsonl", batch_lines=False)
    with pytest.raises(ForeignResultsError):
        run_job(_opts(other, out, sim))
    assert len(list(read_results(out))) == 3
    summary = run_job(_opts(other, out, sim, overwrite=True))
    assert summary.done == 4 and set(_ids(out)) == {f"line-{i}" for i in range(1, 5)}


def test_insufficient_quota_stops_at_once_and_keeps_progress(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim(credit_usd=0.00005)  # a handful of requests' worth
    req = requests_file(60)
    out = tmp_path / "out.jsonl"
    # At most 8 in flight, so "stopped at once" is exact: no more quota errors than requests already on the
    # wire when the first one came back (the window would otherwise grow with the learned limits).
    summary = run_job(_opts(req, out, sim, cache=False, max_in_flight=8))
    assert summary.exit_code == ExitCode.QUOTA and summary.stop == "quota"
    assert "billing" in summary.message and "rerun" in summary.message
    done = _ids(out)
    assert 0 < len(done) < 60 and max(done.values()) == 1
    assert summary.done == len(done)
    quota_429s = sim.stats()["rate_limited"]["insufficient_quota"]
    assert quota_429s <= 8  # stopped at once: nothing sent after it, no retry storm against a billing error

    sim2 = make_sim()  # credit added: the same command resumes
    resumed = run_job(_opts(req, out, sim2, cache=False))
    assert resumed.exit_code == ExitCode.OK and resumed.already_done == len(done)
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(60)})
    assert _sent(sim2) == 60 - len(done)


def test_budget_stops_before_crossing_and_resumes(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    req = requests_file(50)
    out = tmp_path / "out.jsonl"
    budget = 0.00005
    summary = run_job(_opts(req, out, sim, budget_usd=budget, cache=False))
    assert summary.exit_code == ExitCode.BUDGET and summary.stop == "budget"
    assert 0 < summary.done < 50 and summary.cost_usd <= budget
    assert "--budget-usd" in summary.message
    resumed = run_job(_opts(req, out, sim, cache=False))
    assert resumed.exit_code == ExitCode.OK
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(50)})


def test_ordered_output_follows_input_order(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim(latency_ms=5, latency_jitter=1.0)
    out = tmp_path / "out.jsonl"
    summary = run_job(_opts(requests_file(30), out, sim, ordered=True))
    assert summary.done == 30
    assert [line["custom_id"] for line in read_results(out)] == [f"req-{i}" for i in range(30)]


def test_http_errors_are_recorded_like_the_batch_api(make_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    sim = make_sim()
    req = tmp_path / "req.jsonl"
    req.write_text('{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "out.jsonl"
    summary = run_job(_opts(req, out, sim))
    (line,) = list(read_results(out))
    # Recorded, and said in the exit code: a job of 404s is not a success.
    assert summary.exit_code == ExitCode.HTTP_ERRORS and summary.http_errors == 1
    assert summary.errors_by_code == {"404 model_not_found": 1} and "404 model_not_found" in summary.message
    assert line["response"]["status_code"] == 404 and line["error"] is None
    assert line["response"]["body"]["error"]["code"] == "model_not_found"


def _bodies(path: Path, models: list[str]) -> Path:
    import orjson

    with open(path, "wb") as fh:
        for i, model in enumerate(models):
            body = {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2}
            fh.write(orjson.dumps(body) + b"\n")
    return path


def test_a_job_that_cannot_succeed_stops_early_and_records_nothing(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    """Every answer the same 404 and nothing succeeded: stop after a few (not 200 paid failures), exit 8, say
    why; nothing recorded, so the same command asks again once the cause is fixed."""
    sim = make_sim(latency_ms=5)
    req = _bodies(tmp_path / "req.jsonl", ["gpt-4o-minii"] * 200)  # a typo in the model name
    out = tmp_path / "out.jsonl"
    summary = run_job(_opts(req, out, sim, max_in_flight=8))
    assert summary.exit_code == ExitCode.API_ERROR and summary.stop == "hopeless"
    assert "404 model_not_found" in summary.message and "gpt-4o-minii" in summary.message
    assert _sent(sim) < 40  # stopped within the first few answers
    assert list(read_results(out)) == []


def test_errors_next_to_successes_are_recorded_and_the_job_runs_to_its_end(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = make_sim()
    models = ["no-such-model"] * 5 + ["gpt-4o-mini"] * 10  # fewer 404s than it takes to call the job hopeless
    out = tmp_path / "out.jsonl"
    summary = run_job(_opts(_bodies(tmp_path / "req.jsonl", models), out, sim, ordered=True))
    assert summary.done == 15 and summary.succeeded == 10 and summary.http_errors == 5
    assert [line["custom_id"] for line in read_results(out)] == [f"line-{i}" for i in range(1, 16)]  # in order
    assert summary.exit_code == ExitCode.HTTP_ERRORS


class _Flaky:
    """A real HttpSender (Pilot transport, simulator) except for two requests that fail unexpectedly."""

    def __init__(self, http: HttpSender) -> None:
        self.http = http

    async def send(self, request: RequestLine) -> Answer:
        if request.custom_id == "req-3":
            raise CostTooLarge(f"cost 10**9 tokens exceeds every limit (key {SECRET})")
        if request.custom_id == "req-7":
            raise ValueError("a bug")
        return await self.http.send(request)


async def test_unexpected_task_errors_are_logged_and_leave_the_job_incomplete(
    make_sim: Callable[..., Simulator],
    requests_file: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ratepilot.client import Pilot

    sim = make_sim()
    req = requests_file(10)
    out = tmp_path / "out.jsonl"
    options = RunOptions(req, out, base_url=sim.base_url, api_key=KEY, cache=False)
    pilot = Pilot()
    http = HttpSender(pilot, sim.base_url, KEY)
    try:
        with caplog.at_level(logging.ERROR, logger="ratepilot.engine.online"):
            summary = await arun_job(options, sender=_Flaky(http), pilot=pilot)
    finally:
        await http.aclose()
        pilot.close()
    assert summary.exit_code == ExitCode.INCOMPLETE and summary.unfinished == 2 and summary.done == 8
    assert "CostTooLarge" in summary.message and "2 of them failed with an unexpected error" in summary.message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "req-3" in logged and "req-7" in logged and "ValueError: a bug" in logged
    assert SECRET not in logged and SECRET not in summary.message
    resumed = await arun_job(options)  # the two are asked again
    assert resumed.exit_code == ExitCode.OK and resumed.done == 10
    assert len(list(read_results(out))) == 10


def test_realistic_enforcement_answers_every_request_with_few_refusals(
    requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    """The --realistic preset (per-second windows, charged refusals, missing headers and retry-after, a ramp
    limit; here with 2 s ramp windows so that the ramp bites within the job): nothing abandoned, few 429s."""
    from ratepilot.sim import SimConfig

    config = SimConfig.realistic(rpm=3_000, tpm=5_000_000, responder="classify", ramp_window_s=2.0)
    req = requests_file(150)
    out = tmp_path / "out.jsonl"
    with Simulator(config) as sim:
        summary = run_job(_opts(req, out, sim, cache=False))
        stats = sim.stats()
    assert summary.exit_code == ExitCode.OK and summary.done == 150 and summary.succeeded == 150
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(150)})
    refused = stats["rate_limited"]["total"]
    assert refused <= 6, stats["rate_limited"]  # the window's discovery and the ramp's slow_down, not a storm


def test_a_server_that_never_sends_rate_limit_headers_gets_no_storm(
    requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    """No x-ratelimit-* headers on any answer, no retry-after, and the minute enforced per second: the limiter
    learns the limit from the 429's own words ("Limit 3000, Used 41") and paces. (It used to rely on the
    refusals' waits alone: ~5 429s per request.)"""
    from ratepilot.sim import FaultConfig, SimConfig

    faults = FaultConfig(missing_headers=1.0, headers_on_429_p=0.0, retry_after_p=0.0)
    config = SimConfig(rpm=3_000, tpm=5_000_000, responder="classify", quantum_s=1.0, faults=faults)
    req = requests_file(150)
    out = tmp_path / "out.jsonl"
    with Simulator(config) as sim:
        summary = run_job(_opts(req, out, sim, cache=False))
        stats = sim.stats()
    assert summary.exit_code == ExitCode.OK and summary.succeeded == 150
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(150)})
    assert stats["rate_limited"]["total"] <= 8, stats["rate_limited"]  # the first burst's, not a storm


@pytest.mark.parametrize("cap", [None, 1_200])
def test_max_rpm_paces_to_a_limit_no_header_reports(
    requests_file: Callable[..., Path], tmp_path: Path, cap: int | None
) -> None:
    """The key's project allows 1,200 RPM (enforced per second too), its organization 10,000, and the headers
    show the organization's: ``ratepilot run --max-rpm 1200`` paces to the project's limit. (Without it, the
    project's refusals are waited out one by one: the limit they name is not learned yet, docs/limiter.md.)"""
    from typer.testing import CliRunner

    from ratepilot.cli import app
    from ratepilot.sim import KeySpec, Limits, SimConfig

    config = SimConfig(
        rpm=10_000,
        responder="fixed",
        quantum_s=1.0,
        keys={KEY: KeySpec("org-p", "proj_a")},
        projects={"proj_a": Limits(rpm=1_200)},
    )
    req, out = requests_file(80), tmp_path / "out.jsonl"
    with Simulator(config) as sim:
        args = ["run", str(req), "-o", str(out), "--base-url", sim.base_url, "--no-cache", "--json"]
        result = CliRunner().invoke(
            app, args + ([] if cap is None else ["--max-rpm", str(cap)]), env={"OPENAI_API_KEY": KEY}
        )
        refused = sim.stats()["rate_limited"]["project"]
    assert result.exit_code == 0, result.output
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(80)})
    if cap is None:
        assert refused > 10  # what the flag is for
    else:
        assert refused <= 2


def test_nothing_listening_at_the_base_url_stops_at_once_and_names_it(
    requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    out = tmp_path / "out.jsonl"
    summary = run_job(RunOptions(requests=requests_file(50), output=out, base_url=base_url, api_key=KEY, cache=False))
    assert summary.exit_code == ExitCode.API_ERROR and summary.stop == "unreachable"
    assert f"cannot reach {base_url}" in summary.message and "base-url" in summary.message
    assert summary.done == 0 and not out.read_bytes()
    # Two attempts for the first requests in flight, not eight for every request of the job.
    assert summary.http_requests <= 2 * 64


def test_an_html_page_at_the_base_url_is_no_success(requests_file: Callable[..., Path], tmp_path: Path) -> None:
    """A web server's welcome page answering 200 to every POST: not JSON, so an error, never a success or a
    cache entry; all the same, so the job stops early."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Welcome(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            page = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Welcome)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = tmp_path / "out.jsonl"
        summary = run_job(RunOptions(requests=requests_file(100), output=out, base_url=base_url, api_key=KEY))
    finally:
        server.shutdown()
        server.server_close()
    assert summary.exit_code == ExitCode.API_ERROR and summary.stop == "hopeless"
    assert "200 not JSON" in summary.message and "Welcome to nginx" in summary.message
    assert summary.succeeded == 0 and not out.read_bytes()


def test_a_frozen_limiter_store_stops_the_run_at_once(requests_file: Callable[..., Path], tmp_path: Path) -> None:
    """A Redis that accepts connections and never answers: one short timeout, then exit 11 naming the store —
    not one timeout per request for hours."""
    import socket

    from ratepilot.exitcodes import ExitCode as Codes

    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(64)  # the kernel accepts; nothing ever reads or answers
    try:
        store = f"redis://127.0.0.1:{frozen.getsockname()[1]}/0?socket_timeout=0.3"
        out = tmp_path / "out.jsonl"
        options = RunOptions(
            requests=requests_file(40), output=out, base_url="http://127.0.0.1:9/v1", api_key=KEY, store=store
        )
        summary = run_job(options)
    finally:
        frozen.close()
    assert summary.exit_code == Codes.STORE_UNAVAILABLE and summary.stop == "store"
    assert f"127.0.0.1:{store.split(':')[2].split('/')[0]}" in summary.message and "--store" in summary.message
    assert summary.done == 0


def test_the_budget_belongs_to_the_job_across_reruns(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    """--budget-usd caps the job, not each run of it: a rerun with the same budget does not spend it again."""
    sim = make_sim()
    req = requests_file(80)
    out = tmp_path / "out.jsonl"
    first = run_job(_opts(req, out, sim, cache=False, budget_usd=1e-4))
    assert first.exit_code == ExitCode.BUDGET and 0 < first.done < 80
    again = run_job(_opts(req, out, sim, cache=False, budget_usd=1e-4))
    assert again.exit_code == ExitCode.BUDGET
    # The rerun spends only what the first left (worst-case reservations stop a run short of the cap).
    assert first.cost_usd + again.cost_usd <= 1e-4 + 1e-9
    assert again.done < 80
    more = run_job(_opts(req, out, sim, cache=False, budget_usd=1.0))  # raised: the job goes on
    assert more.exit_code == ExitCode.OK and more.done == 80


def test_budget_alerts_come_in_order_and_the_refusal_counts_what_is_in_flight() -> None:
    from ratepilot.client.budget import Budget, BudgetAlert
    from ratepilot.errors import BudgetExceeded

    seen: list[BudgetAlert] = []
    budget = Budget(1.0, on_alert=seen.append, spent_usd=0.2)
    held = budget.reserve(0.3, "m")  # in flight: 0.2 spent + 0.3 reserved
    with pytest.raises(BudgetExceeded, match=r"\$0\.500000 spent so far \(in-flight"):
        budget.reserve(0.6, "m")
    budget.commit(held, 0.7)  # spending now crosses 50% and 80%: no alert may follow the refusal's 100%
    assert [a.threshold for a in seen] == [1.0] and seen[0].refused
    assert Budget(1.0, spent_usd=0.9)._fired == {0.5, 0.8}  # a resumed job does not re-announce what it passed


def test_a_full_disk_stops_admitting_keeps_the_file_whole_and_a_rerun_completes(
    make_sim: Callable[..., Simulator],
    requests_file: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC on the results file (injected after two group commits): exit 12 with a clear message, no torn
    line, no traceback; once there is room the same command answers the rest, each request exactly once."""
    import errno
    import os

    sim = make_sim(rpm=600, latency_ms=2)  # ~1 s for the first minute's burst: several group commits
    req = requests_file(200)
    out = tmp_path / "out.jsonl"
    real_write = os.write
    writes = [0]

    def full_disk(fd: int, data: object) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target == str(out):
            writes[0] += 1
            if writes[0] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", full_disk)
    summary = run_job(_opts(req, out, sim, cache=False))
    monkeypatch.setattr(os, "write", real_write)
    assert summary.exit_code == ExitCode.WRITE_FAILED and summary.stop == "write"
    assert "No space left on device" in summary.message and str(out) in summary.message
    written = list(read_results(out))  # every line whole (a torn tail would not parse)
    assert 0 < len(written) == summary.done < 200
    assert _sent(sim) < 200  # admission stopped at the first failed write
    again = run_job(_opts(req, out, sim, cache=False))
    assert again.exit_code == ExitCode.OK
    assert _ids(out) == Counter({f"req-{i}": 1 for i in range(200)})


def test_a_server_that_never_answers_stops_the_run_after_its_timeouts(
    requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    """Connections accepted, nothing ever answered: --request-timeout per attempt, 2 attempts while the server
    has never answered, then the job stops naming the URL — not attempts x 10 minutes per request."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = silent.accept()
                held.append(conn)  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    try:
        options = RunOptions(
            requests=requests_file(20),
            output=tmp_path / "out.jsonl",
            base_url=base_url,
            api_key=KEY,
            cache=False,
            request_timeout_s=0.3,
        )
        summary = run_job(options)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        silent.close()
    assert summary.exit_code == ExitCode.API_ERROR and summary.stop == "unreachable"
    assert f"cannot reach {base_url}" in summary.message and summary.done == 0


def test_the_api_key_is_in_no_repr(make_sim: Callable[..., Simulator], requests_file: Callable[..., Path]) -> None:
    sim = make_sim()
    req = requests_file(2)
    options = RunOptions(req, req.with_name("out.jsonl"), base_url=sim.base_url, api_key=SECRET)
    assert SECRET not in repr(options) and SECRET not in str(options)
    summary = run_job(options)
    assert summary.exit_code == ExitCode.OK
    for text in (repr(summary), str(summary), json.dumps(summary.to_dict())):
        assert SECRET not in text
