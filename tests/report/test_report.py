"""`ratepilot report` and `ratepilot status` on real jobs: the demo's, and one with failures and refusals.

The HTML must be self-contained (no request leaves the page) and its charts must really render: headless Chromium
(Debian's ``chromium``) loads the file, its DOM after the scripts ran is checked for plotly's drawn SVG in every
chart, and a screenshot of it must be a picture (many colours), not a blank page.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.cli.demo_job import run_demo
from ratepilot.clock import FakeClock
from ratepilot.report import job_status, load_job
from ratepilot.results import open_results
from ratepilot.trace import TraceWriter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHARTS = ("requests-rate", "tokens-rate", "refusals", "latency", "cost", "failures")


def _chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must have it: .ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium) - the report's rendering is not checked")
    return CHROMIUM


def _headless(html: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. The virtual time budget lets the
    # page's scripts run to the end before the DOM is dumped or the screenshot taken.
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    cmd += ["--virtual-time-budget=15000", *args, html.as_uri()]
    return subprocess.run(cmd, capture_output=True, timeout=90, check=False)


def _png_colours(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct colours) of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 4 == 0:  # every 4th row is plenty to count the colours of charts
            colours.update(bytes(line[x : x + 3]) for x in range(0, stride, bpp * 2))
        prev = line
    return width, height, len(colours)


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo, small and fast (a high limit): its online job kept, and its report written."""
    home = tmp_path_factory.mktemp("home")
    console = Console(file=io.StringIO(), width=120)
    old = os.environ.get("RATEPILOT_HOME")
    os.environ["RATEPILOT_HOME"] = str(home)  # module-scoped: monkeypatch is per test
    try:
        out = run_demo(n=60, rpm=2_000, console=console, live=False, realistic_n=6, report_dir=home / "demo")
    finally:
        if old is None:
            del os.environ["RATEPILOT_HOME"]
        else:
            os.environ["RATEPILOT_HOME"] = old
    out["text"] = console.file.getvalue()  # type: ignore[attr-defined]
    return out


def test_the_demo_ends_by_writing_its_report_and_printing_where(demo_job: dict[str, Any]) -> None:
    report = Path(demo_job["report"])
    assert report.is_file() and report.name == "report.html"
    last = [line for line in demo_job["text"].splitlines() if line.strip()][-2:]
    assert str(report) in " ".join(last).replace("\n", "")
    # No average since the start next to the per-minute limit (it counted the opening burst): the pace in words,
    # measured once the burst is spent (this small demo fits in its burst).
    assert "req/min" not in demo_job["text"] and "online: the whole job fit in the opening burst" in demo_job["text"]


def test_the_sustained_rate_is_measured_past_the_opening_burst(tmp_path: Path) -> None:
    """200 answers at once (a full bucket), then 200/min for 60 s: the sustained rate is the limit's, where an
    average since the start would read 400/min."""
    results = tmp_path / "results.jsonl"
    open_results(results, "job-burst").close()
    clock = FakeClock(start=0.0)
    trace = TraceWriter.open(results, clock=clock)
    trace.limits(0.0, "gpt-4o-mini", (200, 0, 60.0), (400_000, 382_000, 3.0))
    for i in range(200):
        trace.request(f"b{i}", started=0.0, ended=0.2, status=200, model="gpt-4o-mini", prompt=90, completion=1)
    for i in range(200):
        clock.advance(0.3)
        trace.request(f"s{i}", started=clock.now(), ended=clock.now(), status=200, model="gpt-4o-mini", prompt=90)
    trace.close()
    sustained = load_job(results).sustained()
    assert sustained is not None
    _, per_min, tokens_per_min, span, after_burst = sustained
    assert after_burst
    assert per_min == pytest.approx(200, rel=0.02) and tokens_per_min == pytest.approx(200 * 90, rel=0.02)
    assert span == pytest.approx(40, abs=1)  # the later two thirds of the time after the burst


def test_429s_are_counted_from_the_counters_of_every_run(tmp_path: Path) -> None:
    """Each run's snapshots carry its Pilot's running totals: the job's 429s are the sum of each run's increases."""
    results = tmp_path / "results.jsonl"
    open_results(results, "job-429").close()
    clock = FakeClock(start=0.0)
    for totals in ((3, 7), (2, 5)):  # two runs: 7 429s, then 5 (each run's counters start again from 0)
        trace = TraceWriter.open(results, clock=clock)
        for refused in (0, *totals):
            clock.advance(1.0)
            trace.request("x", started=clock.now(), ended=clock.now(), status=200, model="m", attempts=2)
            trace.limits(clock.now(), "m", (60, 10, 1.0), None, (10 * refused, refused, refused, 0))
        trace.close()
    view = load_job(results)
    assert view.rate_limited == 12 and view.retries == 6
    series = view.series(bin_s=1.0)
    assert sum(series.rate_limited) == 12 and sum(series.retries) == 6


def test_report_on_a_demo_job_is_self_contained_and_its_charts_render_in_chromium(
    demo_job: dict[str, Any], tmp_path: Path
) -> None:
    results = Path(demo_job["report"]).with_name("results-online.jsonl")
    html = tmp_path / "demo-report.html"
    result = CliRunner().invoke(app, ["report", str(results), "-o", str(html)])
    assert result.exit_code == 0, result.output
    assert "60 of 60" in result.output and f"report written: {html}" in result.output
    page = html.read_text(encoding="utf-8")
    # Self-contained: plotly inlined once, nothing fetched (no external script, stylesheet, image or font).
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert page.count("Plotly.newPlot") >= 5 and "demo-0001" not in page  # the demo job's key: never shown
    for key in CHARTS[:-1]:
        assert f'id="chart-{key}"' in page

    dom = _headless(html, "--dump-dom")
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    rendered = dom.stdout.decode()
    for key in CHARTS[:-1]:  # the demo's job has no failures: that section says so instead of drawing
        div = rendered.split(f'id="chart-{key}"', 1)
        assert len(div) == 2 and 'class="main-svg"' in div[1][:20_000], f"chart {key} was not drawn"
    assert "Every result is a success." in rendered

    png = tmp_path / "report.png"
    shot = _headless(html, f"--screenshot={png}", "--window-size=1200,3600")
    assert shot.returncode == 0 and png.is_file(), shot.stderr.decode(errors="replace")[-2000:]
    width, height, colours = _png_colours(png)
    assert (width, height) == (1200, 3600)
    assert colours > 50, f"the screenshot is nearly blank ({colours} colours)"


def _failing_job(tmp_path: Path) -> Path:
    """A job with HTTP errors, run through `ratepilot run` against a simulator."""
    from ratepilot.sim import SimConfig, Simulator

    requests = tmp_path / "req.jsonl"
    with open(requests, "wb") as fh:
        for i in range(30):
            model = "gpt-not-a-model" if i % 5 == 4 else "gpt-4o-mini"
            body = {"model": model, "messages": [{"role": "user", "content": f"doc {i}: yes"}], "max_tokens": 3}
            fh.write(
                orjson.dumps({"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + b"\n"
            )
    out = tmp_path / "results.jsonl"
    with Simulator(SimConfig(responder="classify")) as sim:
        args = ["run", str(requests), "-o", str(out), "--base-url", sim.base_url, "--api-key", "test-key-0042", "-q"]
        result = CliRunner().invoke(app, [*args, "--no-cache"])
    assert result.exit_code == 10, result.output  # done, some results are HTTP errors
    return out


def test_report_and_status_show_failures_by_code_with_examples(tmp_path: Path) -> None:
    out = _failing_job(tmp_path)
    html = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(out), "-o", str(html), "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output.strip().splitlines()[-1])
    assert data["report"] == str(html) and data["done"] == data["total"] == 30
    assert data["failures_by_code"] == {"404 model_not_found": 6} and data["state"] == "done"
    page = html.read_text(encoding="utf-8")
    assert 'id="chart-failures"' in page and "404 model_not_found" in page and "doc-4" in page

    status = CliRunner().invoke(app, ["status", str(out), "--json"])
    assert status.exit_code == 10, status.output  # done, but some results are errors
    info = orjson.loads(status.output.strip().splitlines()[-1])
    assert (info["done"], info["total"], info["succeeded"], info["http_errors"]) == (30, 30, 24, 6)
    assert info["cost_usd"] > 0 and info["cost_from"] == "trace" and info["running_pid"] is None
    text = CliRunner().invoke(app, ["status", str(out)])
    assert "30 of 30" in text.output and "6 x 404 model_not_found" in text.output


def test_status_of_a_running_job_reads_the_rate_and_eta_from_the_trace(tmp_path: Path) -> None:
    """A job being written by another live process: 10 answers a second for the last 30 s, 300 left."""
    results = tmp_path / "results.jsonl"
    requests = tmp_path / "req.jsonl"
    requests.write_bytes(b'{"model": "m", "messages": []}\n' * 600)
    writer = open_results(results, "job-x", requests=requests)
    for i in range(300):
        body = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
        writer.append({"id": f"r{i}", "custom_id": f"line-{i + 1}", "response": {"status_code": 200, "body": body}})
    writer.close()
    clock = FakeClock(start=0.0, wall_start=1_800_000_000.0)
    trace = TraceWriter.open(results, clock=clock)
    trace.limits(0.0, "gpt-4o-mini", (600, 600, 0.0), (1_000_000, 1_000_000, 0.0))
    for i in range(300):
        clock.advance(0.1)
        trace.request(f"line-{i + 1}", started=clock.now() - 0.5, ended=clock.now(), status=200, model="m", prompt=10)
    trace.flush()  # no end line: the run is still going
    # The lock file names the process writing the job: a live one (a child waiting for its stdin to close).
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lock = results.with_name(results.name + ".ratepilot.lock")
        lock.write_bytes(orjson.dumps({"pid": child.pid, "host": socket.gethostname(), "since": 0}))
        view = load_job(results)
        status = job_status(view, clock=clock)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    trace.close()
    assert status["state"] == "running" and status["running_pid"] == child.pid
    assert (status["done"], status["total"]) == (300, 600)
    rate = status["rate"]
    assert rate["requests_per_min"] == pytest.approx(600, rel=0.05) and rate["window_s"] >= 10
    assert rate["eta_s"] == pytest.approx(30, rel=0.05)  # 300 left at 10 a second
    # Once the process is gone, the job is no longer running: it is left to be resumed.
    assert job_status(load_job(results))["state"] == "incomplete"


def test_status_without_a_results_file_is_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", str(tmp_path / "nope.jsonl"), "--json"])
    assert result.exit_code == 2
    assert orjson.loads(result.output.strip().splitlines()[-1])["error"]["code"] == "bad_input"
