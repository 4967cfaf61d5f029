"""The live bar tells the truth: rates over a sliding window next to the limits, an ETA from the sustained rate.

The run test drives a real job — the real runner, the Pilot's transport, a simulator over HTTP — at a known pace on
a FakeClock: a gate in front of the sender lets the first requests through at once (a full bucket's burst) and then
one every 0.1 s of the fake clock, one request at a time. The bar's figures are compared with that pace and with
when the job really ended.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.requests import RequestLine
from ratepilot.run import Answer, HttpSender, RunOptions, RunSummary, arun_job
from ratepilot.run.progress import LiveProgress, Pace, PaceMeter, rates_line
from ratepilot.sim import SimConfig, Simulator

KEY = "test-progress-key-0001"  # the simulator takes any non-empty key


class PacedSender:
    """The real sender behind a gate: ``burst`` requests at once, then one every ``1 / per_second`` seconds of the
    fake clock. One request at a time (the gate is held until its answer), so the count of answers at any fake
    instant is exactly the pace's, however fast or slow this machine answers in real time.

    The fake clock runs as fast as requests are answered, while the runner reports progress once per group commit
    (an fsync: slow on a busy disk). On a real clock that is every 50 ms; here the gate holds the clock until the
    progress of the last fake second has been reported (:meth:`sampled`), so the bar is read as often as it would be.
    """

    def __init__(self, inner: HttpSender, clock: FakeClock, *, burst: int, per_second: float) -> None:
        self.inner, self.clock, self.burst, self.interval = inner, clock, burst, 1.0 / per_second
        self.sent = 0
        self._gate = asyncio.Lock()
        self._last_report = clock.now()
        self._reported = asyncio.Event()

    def sampled(self) -> None:
        self._last_report = self.clock.now()
        self._reported.set()

    async def send(self, request: RequestLine) -> Answer:
        async with self._gate:
            if self.sent >= self.burst:
                while self.clock.now() - self._last_report >= 1.0:
                    self._reported.clear()
                    await self._reported.wait()  # the answers before this one are buffered: a report will come
                await self.clock.asleep(self.interval)
            self.sent += 1
            return await self.inner.send(request)


@dataclass(frozen=True)
class Seen:
    t: float
    done: int
    pace: Pace
    text: str


def _text(progress: LiveProgress) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(progress._render())
    return console.file.getvalue()  # type: ignore[attr-defined]


async def test_the_bar_shows_the_sustained_rate_and_a_true_eta(
    requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    limit, burst, n = 600, 500, 1100  # 500 at once, then 10/s (the limit's refill): the job lasts 60 s
    clock = FakeClock(start=0.0)
    pilot = Pilot(clock=clock)
    progress = LiveProgress(Console(file=io.StringIO()), clock=clock)
    seen: list[Seen] = []

    def on_progress(summary: RunSummary) -> None:
        progress.update(summary)
        seen.append(Seen(clock.now(), summary.done, progress.pace(), _text(progress)))
        sender.sampled()

    with Simulator(SimConfig(rpm=limit, tpm=10_000_000, responder="classify"), clock=clock) as sim:
        sender = PacedSender(HttpSender(pilot, sim.base_url, KEY), clock, burst=burst, per_second=limit / 60)
        options = RunOptions(requests=requests_file(n), output=tmp_path / "out.jsonl", cache=False)
        try:
            summary = await arun_job(options, sender=sender, pilot=pilot, on_progress=on_progress)
        finally:
            await sender.inner.aclose()
            pilot.close()
        assert sim.stats()["rate_limited"]["total"] == 0
    end = clock.now()
    assert summary.done == n and summary.exit_code == 0
    assert end == pytest.approx(60.0, abs=0.2)  # the pace is the gate's: nothing else moves the fake clock

    # Windows that start after the burst measure the pace: the limit's 600/min, and the ETA is the time left.
    steady = [s for s in seen if s.pace.window_s and s.t - s.pace.window_s >= 1.0 and s.done < n]
    assert len(steady) >= 30, [(s.t, s.done) for s in seen]
    for s in steady:
        assert s.pace.requests_per_min == pytest.approx(limit, rel=0.03), s.text
        assert s.pace.eta_s == pytest.approx(end - s.t, abs=max(0.5, 0.03 * (end - s.t))), s.text
        assert f"/ {limit}" in s.text and "burst" not in s.text and "(last 1" in s.text

    # While the window still holds the burst, the rate reads far above the per-minute limit and says why, and the
    # ETA counts at the limit (the burst cannot repeat). The defect this pins: "ETA 0s" from 63% with 16-29 s left.
    early = [s for s in seen if 2.0 <= s.t < 10.0 and s.done < n]
    assert early, [(s.t, s.done) for s in seen]
    for s in early:
        assert s.pace.requests_per_min > 2 * limit and "burst" in s.text, s.text
        assert s.pace.eta_s == pytest.approx(end - s.t, abs=max(0.5, 0.03 * (end - s.t))), s.text
        assert "(at the requests limit)" in s.text
    assert seen[-1].done == n and seen[-1].pace.eta_s == 0.0


def test_a_stall_shows_falling_rates_and_no_eta() -> None:
    meter = PaceMeter()
    for t in range(31):
        meter.add(float(t), done=10 * t, tokens=500 * t)  # 10 requests/s for 30 s
    at_30 = meter.pace(30.0, remaining=1000, requests_limit=1200)
    assert at_30.window_s == pytest.approx(10.0) and at_30.requests_per_min == pytest.approx(600.0)
    assert at_30.eta_s == pytest.approx(100.0) and at_30.bound == "measured"
    # Nothing finishes after t=30: the window's rate falls, then reads 0 with no ETA (never a hopeful guess), even
    # though a slow job's window would widen to find answers.
    half = meter.pace(35.0, remaining=1000, requests_limit=1200)
    assert half.requests_per_min == pytest.approx(300.0)
    stalled = meter.pace(41.0, remaining=1000, requests_limit=1200)
    assert stalled.requests_per_min == 0.0 and stalled.eta_s is None and stalled.window_s == pytest.approx(11.0)


def test_the_eta_is_bound_by_the_tokens_limit_over_the_remaining_tokens() -> None:
    meter = PaceMeter()
    for t in range(0, 21):
        meter.add(float(t), done=4 * t, tokens=4_000 * t, retries=t // 2, rate_limited=t // 4)
    # 240 req/min measured, 1,000 tokens a request; the tokens limit allows 120 req/min from here on.
    pace = meter.pace(20.0, remaining=100, requests_limit=10_000, tokens_limit=120_000)
    assert pace.requests_per_min == pytest.approx(240.0) and pace.tokens_per_min == pytest.approx(240_000.0)
    assert pace.eta_s == pytest.approx(50.0) and pace.bound == "tokens limit"
    assert pace.retries_per_min == pytest.approx(30.0) and pace.rate_limited_per_min == pytest.approx(18.0)
    assert "tok/min 240,000 / 120,000 burst" in rates_line(pace, 10_000, 120_000)


def test_a_slow_job_widens_the_window_until_its_rate_is_steady() -> None:
    meter = PaceMeter()
    for t in range(0, 121, 5):
        meter.add(float(t), done=t // 5)  # 12 requests a minute: 2 in 10 s would be a coarse rate
    pace = meter.pace(120.0, remaining=24)
    assert pace.window_s == pytest.approx(60.0) and pace.requests_per_min == pytest.approx(12.0)
    assert pace.eta_s == pytest.approx(120.0)
    assert meter.pace(0.5, remaining=5).eta_s is None  # too young to measure: no figure rather than a wild one


def test_ctrl_c_says_how_much_is_saved() -> None:
    out = io.StringIO()
    progress = LiveProgress(Console(file=out, width=200), clock=FakeClock())
    summary = RunSummary(
        "r.jsonl", "out.jsonl", "online", "--mode online", total=5_000, invalid_skipped=0, already_done=0
    )
    summary.done = 1_234
    with pytest.raises(KeyboardInterrupt), progress:
        progress.update(summary)
        raise KeyboardInterrupt
    assert "1,234 of 5,000 saved in out.jsonl; rerun the same command to resume" in out.getvalue()
