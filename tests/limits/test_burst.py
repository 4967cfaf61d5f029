"""The learned burst: the limiter survives any enforcement granularity, in every store (fake clock).

A discrete-event driver stands in for the network: the server is the simulator's own enforcement model
(:class:`ratepilot.sim.enforcement.PoolBuckets`: minute buckets, optional quantum buckets, charged refusals, an
optional ramp limit), answering each request ``LATENCY`` seconds after it was sent, settling its tokens before
writing the headers, as the simulator does. The client does what ``ratepilot.client``'s exchange does with each
answer: settle, observe (``answered`` on a success), and on a 429 tell the limiter ``refused`` with the
evidence :func:`ratepilot.limits.learning.refusal_evidence` finds, then retry after the server's hint. A
refusal never abandons a request. ``k`` requests may be in flight.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import pytest

from ratepilot.clock import FakeClock
from ratepilot.limits import Cost, Grant, Limiter, Priority, Scope, core
from ratepilot.limits.core import Wait
from ratepilot.limits.learning import refusal_evidence
from ratepilot.protocol.errors import rate_limit_error
from ratepilot.protocol.headers import RateLimitHeaders
from ratepilot.sim.config import Limits, SimConfig
from ratepilot.sim.enforcement import PoolBuckets, Ramp, ideal_admissions

LATENCY = 0.05
SCOPE = Scope("kburst", "gpt-4o-mini")


@dataclass
class Run:
    admitted: list[float] = field(default_factory=list)  # server admission times
    refusals: list[float] = field(default_factory=list)  # when the server refused (429)
    slow_downs: int = 0
    finished: float = 0.0
    limiter: Limiter | None = None


def drive(
    store_uri: str,
    *,
    rpm: int,
    tpm: int,
    cost: int,
    actual: int,
    n: int,
    k: int = 16,
    quantum_s: float | None = None,
    ramp: Ramp | None = None,
    headers_on_429: bool = True,
    start_burst: float | None = None,
    ceiling: dict[str, float] | None = None,
    latency: float = LATENCY,
) -> Run:
    clock = FakeClock(start=0.0)
    extra: dict[str, object] = {} if start_burst is None else {"start_burst": start_burst}
    if ceiling is not None:
        extra["ceiling"] = ceiling
    limiter = Limiter(store_uri, clock=clock, **extra)  # type: ignore[arg-type]
    server = PoolBuckets(Limits(rpm=rpm, tpm=tpm), quantum_s=quantum_s, ramp=ramp)
    ready: list[tuple[float, int]] = [(0.0, i) for i in range(n)]  # (not before, request) — FIFO by order
    heapq.heapify(ready)
    in_flight: list[tuple[float, int, int, Grant, object]] = []  # (answer at, order, request, grant, refusal)
    run = Run(limiter=limiter)
    order = 0
    done = 0
    try:
        while done < n:
            now = clock.now()
            while in_flight and in_flight[0][0] <= now + 1e-12:
                _, _, req, grant, refusal = heapq.heappop(in_flight)
                if refusal is None:
                    server.settle(actual - cost, now)
                    limiter.settle(grant, actual)
                    limiter.observe(SCOPE, server.headers(now), grant.granted_at, grant=grant, answered=True)
                    done += 1
                    continue
                limiter.settle(grant, 0)
                headers = server.headers(now) if headers_on_429 else RateLimitHeaders(None, None)
                limiter.observe(SCOPE, headers, grant.granted_at, grant=grant)
                wait = refusal.wait  # type: ignore[attr-defined]
                if refusal.slow_down:  # type: ignore[attr-defined]
                    run.slow_downs += 1
                    limiter.refused(grant, wait, slow_down=True)
                else:
                    body = rate_limit_error("m", "org", refusal.kind, 1, 1, 1, wait)["error"]  # type: ignore[attr-defined]
                    evidence = refusal_evidence(body["message"], body["type"], headers, cost)
                    limiter.refused(grant, wait, evidence=evidence)
                heapq.heappush(ready, (now + wait, req))
            if done == n:
                break
            retry_at = math.inf
            while ready and ready[0][0] <= now + 1e-12 and len(in_flight) < k:
                decision = limiter._try(SCOPE, Cost(1, cost), Priority.NORMAL)  # the drivers' one decision
                if isinstance(decision, Wait):
                    retry_at = math.inf if decision.probe else now + max(decision.seconds, 1e-6)
                    break
                _, req = heapq.heappop(ready)
                refusal = server.admit(1, cost, now, count_refused=True)
                if refusal is None:
                    run.admitted.append(now)
                else:
                    run.refusals.append(now)
                order += 1
                heapq.heappush(in_flight, (now + latency, order, req, decision, refusal))
            next_event = min(
                retry_at,
                in_flight[0][0] if in_flight else math.inf,
                ready[0][0] if ready and len(in_flight) < k and ready[0][0] > now + 1e-12 else math.inf,
            )
            assert not math.isinf(next_event), (
                f"stalled with work left: {len(ready)} ready, {len(in_flight)} sent, {done} done"
            )
            clock.advance(max(0.0, next_event - now))
        run.finished = clock.now()
    finally:
        limiter.close()
    return run


def ideal_finish(rpm: int, tpm: int, cost: int, actual: int, n: int, **settings: object) -> float:
    config = SimConfig(rpm=rpm, tpm=tpm, **settings)  # type: ignore[arg-type]
    return ideal_admissions(config, "gpt-4o-mini", [(cost, actual)] * n)[-1] + LATENCY


# -- the acceptance cases: RPM- and TPM-bound jobs against a server that enforces per second ------------------------


def test_rpm_bound_under_a_one_second_window_converges_in_every_store(store_uri: str) -> None:
    """300 RPM enforced as 5 per second: at most a few refusals in the whole job, then smooth pacing."""
    n = 450  # ideal ~90 s
    run = drive(store_uri, rpm=300, tpm=50_000_000, cost=10, actual=8, n=n, quantum_s=1.0)
    ideal = ideal_finish(300, 50_000_000, 10, 8, n, quantum_s=1.0)
    assert len(run.refusals) <= 0.02 * n, run.refusals
    assert all(t < 5.0 for t in run.refusals), f"refusals after convergence: {run.refusals}"
    assert ideal / run.finished >= 0.95, (ideal, run.finished)


def test_tpm_bound_under_a_one_second_window_never_abandons_and_stays_converged(store_uri: str) -> None:
    """60,000 TPM enforced as 1,000 tokens per second, ~800-token requests (the case that lost a third)."""
    n = 120
    run = drive(store_uri, rpm=30_000, tpm=60_000, cost=820, actual=805, n=n, quantum_s=1.0)
    ideal = ideal_finish(30_000, 60_000, 820, 805, n, quantum_s=1.0)
    assert len(run.admitted) == n  # every request answered: none abandoned for being refused
    assert len(run.refusals) <= 0.02 * n, run.refusals
    assert ideal / run.finished >= 0.93, (ideal, run.finished)


@pytest.mark.parametrize("ceiling", [{"rpm": 300}, {"rpm": 300, "tpm": 50_000_000}])
def test_a_configured_ceiling_is_no_proof_of_the_burst(store_uri: str, ceiling: dict[str, float]) -> None:
    """With a ceiling (and so, for both minute limits, no probe) the burst is still learned, not assumed."""
    n = 450
    run = drive(store_uri, rpm=300, tpm=50_000_000, cost=10, actual=8, n=n, quantum_s=1.0, ceiling=ceiling)
    assert len(run.refusals) <= 0.02 * n, run.refusals


def test_a_state_saved_before_the_burst_was_learned_starts_slow() -> None:
    """A stored state from before the learned burst (39 fields, no tol: the whole minute) decodes, and starts
    slow start at its next header instead of bursting the minute into a one-second window."""
    from ratepilot.limits import core
    from ratepilot.limits.learning import interpret
    from ratepilot.limits.stores.base import decode_state, encode_state

    st = core.ScopeState()
    st.seq, st.lim[0], st.srv[0], st.tat[0] = 7, 300.0, 300.0, 10.0
    old = " ".join(encode_state(st).split()[:39])  # the older, shorter encoding
    st = decode_state(old)
    assert st.tol[0] == 0.0
    obs = interpret(
        RateLimitHeaders.parse(_headers(300, 297)),
        grant=None,
        ceiling=(0.0,) * 5,
        safety_margin=0.0,
        answered=True,
    )
    core.observe(st, obs, 10.0)
    assert st.tol[0] == pytest.approx(1.2)  # max(start 1 s, twice the 0.6 s in use)


def test_429s_without_headers_or_retry_after_are_survived(store_uri: str) -> None:
    n = 200
    run = drive(store_uri, rpm=300, tpm=50_000_000, cost=10, actual=8, n=n, quantum_s=1.0, headers_on_429=False)
    assert len(run.admitted) == n
    assert len(run.refusals) <= 0.03 * n, run.refusals


def test_full_minute_enforcement_still_spends_the_first_minute_at_once(store_uri: str) -> None:
    """No shorter window: slow start reaches the whole minute within a few round trips, with no refusal."""
    n = 600  # 300 at once, then 300 at 5/s: ideal ~60 s
    run = drive(store_uri, rpm=300, tpm=50_000_000, cost=10, actual=8, n=n)
    ideal = ideal_finish(300, 50_000_000, 10, 8, n)
    assert run.refusals == []
    assert ideal / run.finished >= 0.98, (ideal, run.finished)
    assert sum(1 for t in run.admitted if t < 5.0) >= 300  # the first minute was spent within a few seconds


def test_a_burst_refusal_at_full_minute_use_teaches_no_burst() -> None:
    """A refusal with most of the minute in use is the minute bucket's own (another client): no cut, no stall."""
    clock = FakeClock(start=0.0)
    with Limiter("memory://", clock=clock) as lim:
        probe = lim.acquire(SCOPE, Cost(1, 1))
        lim.observe(SCOPE, RateLimitHeaders.parse(_headers(60, 10)), probe.granted_at, grant=probe, answered=True)
        st, _ = lim.store.load(SCOPE.key)
        assert st is not None and st.tol[0] == 60.0  # 50 of 60 in use after a success: the server allows that
        g = lim.acquire(SCOPE, Cost(1, 1))
        lim.settle(g, 0)
        lim.refused(g, 1.0, evidence=("rpm",))
        st, _ = lim.store.load(SCOPE.key)
        assert st is not None and st.tol[0] == 60.0


def test_a_cut_counts_once_per_burst_and_growth_after_it_is_slow() -> None:
    clock = FakeClock(start=0.0)
    with Limiter("memory://", clock=clock) as lim:
        probe = lim.acquire(SCOPE, Cost(1, 1))
        lim.observe(SCOPE, RateLimitHeaders.parse(_headers(300, 299)), probe.granted_at, grant=probe, answered=True)
        grants = [lim.acquire(SCOPE, Cost(1, 1)) for _ in range(4)]  # 1 s allowance at 300 RPM: 5 in use
        for g in grants:
            lim.settle(g, 0)
        lim.refused(grants[-1], 0.2, evidence=("rpm",))  # admitted with 5 in use = 1.0 s: cut to 0.5 s
        lim.refused(grants[-2], 0.2, evidence=("rpm",))  # same burst: no second cut
        st, _ = lim.store.load(SCOPE.key)
        assert st is not None and st.tol[0] == pytest.approx(0.5)
        g = lim.acquire(SCOPE, Cost(1, 1))
        lim.settle(g, 1)
        lim.observe(SCOPE, RateLimitHeaders(None, None), g.granted_at, grant=g, answered=True)
        st, _ = lim.store.load(SCOPE.key)
        assert st is not None and st.tol[0] == pytest.approx(0.5 + 0.002 * 0.2)  # congestion avoidance


# -- slow_down ----------------------------------------------------------------------------------------------------


def test_slow_down_slows_the_pace_and_it_recovers(store_uri: str) -> None:
    clock = FakeClock(start=0.0)
    with Limiter(store_uri, clock=clock, start_burst=0.2) as lim:
        probe = lim.acquire(SCOPE, Cost(1, 1))
        lim.observe(SCOPE, RateLimitHeaders.parse(_headers(600, 599)), probe.granted_at, grant=probe, answered=True)

        def spacing() -> float:
            """Seconds between two admissions at the limiter's pace, once its allowance is spent."""
            for _ in range(3):
                lim.acquire(SCOPE, Cost(1, 0))
            t0 = clock.now()
            lim.acquire(SCOPE, Cost(1, 0))
            return clock.now() - t0

        assert spacing() == pytest.approx(0.1, rel=0.05)  # 600 RPM
        g = lim.acquire(SCOPE, Cost(1, 0))
        lim.settle(g, 0)
        lim.refused(g, 3.0, slow_down=True)  # a wait of 3 s: the full cut, to three quarters of the pace
        # (spacing() waits out the 3 s block first, during which the pace recovers by 3/60)
        assert spacing() == pytest.approx(0.1 / (0.75 + 3 / 60), rel=0.05)
        clock.advance(20.0)
        assert spacing() == pytest.approx(0.1, rel=0.05)  # recovered (linearly, within 15 s)
        g = lim.acquire(SCOPE, Cost(1, 0))
        lim.settle(g, 0)
        lim.refused(g, 0.0, slow_down=True)  # no wait at all: still a trim
        assert spacing() == pytest.approx(0.1 / 0.95, rel=0.03)


@pytest.mark.parametrize(("wait", "cut"), [(0.0, 0.95), (0.01, 0.95), (0.5, 0.871), (1.0, 0.817), (2.0, 0.75)])
def test_a_slow_down_cuts_the_pace_deeper_the_longer_its_wait(wait: float, cut: float) -> None:
    """A near miss at the ramp window's end (a wait of milliseconds) costs little; a long stop, the full cut."""
    assert core.slow_down_cut(wait) == pytest.approx(cut, abs=1e-3)


def test_a_near_miss_at_the_ramp_windows_end_costs_little(store_uri: str) -> None:
    """The realistic ramp (x2 per 15 s from half the rate) lets the second window admit 74 requests, one fewer
    than the full rate of 300 RPM sends: with 20 ms round trips the 75th is refused 10 ms before the third
    window opens. That slow_down asks for a 10 ms wait, so it only trims the pace (a flat cut to three
    quarters cost ~2 s of traffic here: 0.94 of the ideal)."""
    ramp = Ramp(2.0, 15.0, 0.5)
    n = 190
    run = drive(store_uri, rpm=300, tpm=50_000_000, cost=10, actual=8, n=n, quantum_s=1.0, ramp=ramp, latency=0.02)
    assert run.slow_downs == 2 and len(run.admitted) == n
    ideal = ideal_finish(300, 50_000_000, 10, 8, n, quantum_s=1.0, ramp_factor=2.0, ramp_window_s=15.0)
    assert ideal / run.finished >= 0.97, (ideal, run.finished)


def test_a_ramp_limited_server_is_met_with_a_slower_pace_not_a_storm(store_uri: str) -> None:
    ramp = Ramp(2.0, 15.0, 0.5)
    n = 300
    run = drive(store_uri, rpm=300, tpm=50_000_000, cost=10, actual=8, n=n, quantum_s=1.0, ramp=ramp)
    assert len(run.admitted) == n
    assert run.slow_downs <= 3, run.slow_downs
    assert len(run.refusals) <= 0.02 * n
    ideal = ideal_finish(300, 50_000_000, 10, 8, n, quantum_s=1.0, ramp_factor=2.0, ramp_window_s=15.0)
    assert ideal / run.finished >= 0.9, (ideal, run.finished)


def _headers(limit: int, remaining: int) -> dict[str, str]:
    reset = (limit - remaining) * 60.0 / limit
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{reset:.3f}s",
    }
