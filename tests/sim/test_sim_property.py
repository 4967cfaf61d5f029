"""Property: whatever the arrival pattern, the enforcement never admits more than the buckets allow.

A continuously refilling bucket of capacity L refilled over W seconds admits, in any interval [a, b], at
most L + (b - a)·L/W: the full bucket plus what refilled meanwhile. So within any window shorter than one
refill interval it admits at most L, and a window never holds more than L beyond its refill. Tested on the
simulator's enforcement object (all four dimensions at once) with explicit times, no sleeping.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ratepilot.sim.config import Limits
from ratepilot.sim.enforcement import PoolBuckets, Ramp

RPM, TPM, RPD, TPD = 5, 1_000, 40, 20_000

arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0, allow_nan=False),  # gap since the previous arrival, seconds
        st.integers(min_value=1, max_value=1_200),  # token cost (some exceed TPM: "too large")
    ),
    min_size=1,
    max_size=120,
)


def _check_window_bound(admitted: list[tuple[float, int]], limit: int, window: float) -> None:
    rate = limit / window
    for i, (start, _) in enumerate(admitted):
        total = 0
        for t, cost in admitted[i:]:
            total += cost
            assert total <= limit + (t - start) * rate + 1e-6, (start, t, total)


@settings(max_examples=200, deadline=None)
@given(arrivals)
def test_admitted_cost_never_exceeds_the_limits(pattern: list[tuple[float, int]]) -> None:
    buckets = PoolBuckets(Limits(rpm=RPM, tpm=TPM, rpd=RPD, tpd=TPD))
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for gap, cost in pattern:
        now += gap
        refusal = buckets.admit(1, cost, now)
        if refusal is None:
            admitted.append((now, cost))
        elif refusal.too_large:
            assert cost > TPM and math.isinf(refusal.wait)
        else:
            assert refusal.wait > 0 and refusal.used <= refusal.limit
    requests = [(t, 1) for t, _ in admitted]
    _check_window_bound(requests, RPM, 60.0)
    _check_window_bound(requests, RPD, 86_400.0)
    _check_window_bound(admitted, TPM, 60.0)
    _check_window_bound(admitted, TPD, 86_400.0)


@settings(max_examples=120, deadline=None)
@given(arrivals)
def test_waiting_the_announced_time_is_enough(pattern: list[tuple[float, int]]) -> None:
    """A refused request retried exactly after the announced wait (nothing else in between) is admitted."""
    buckets = PoolBuckets(Limits(rpm=RPM, tpm=TPM))
    now = 0.0
    for gap, cost in pattern:
        now += gap
        refusal = buckets.admit(1, cost, now)
        if refusal is not None and not refusal.too_large:
            assert buckets.admit(1, cost, now + refusal.wait) is None
            now += refusal.wait


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), min_size=1, max_size=100))
def test_headers_agree_with_the_bucket(gaps: list[float]) -> None:
    """remaining = limit - used (floored) and reset = time until full, for the binding dimension."""
    buckets = PoolBuckets(Limits(rpm=RPM, rpd=RPD))
    now = 0.0
    for gap in gaps:
        now += gap
        buckets.admit(1, 0, now)
        headers = buckets.headers(now).requests
        assert headers is not None
        assert 0 <= headers.remaining <= headers.limit
        assert headers.limit in (RPM, RPD)
        if headers.remaining == headers.limit:
            assert headers.reset == 0


QUANTUM = 2.0  # seconds: the quantum buckets hold RPM × 2 / 60 = 1/6 request (every request is "large")
TPM_QUANTUM = TPM * QUANTUM / 60  # and 33.3 tokens


@settings(max_examples=200, deadline=None)
@given(arrivals, st.booleans())
def test_quantized_admissions_stay_within_both_buckets(pattern: list[tuple[float, int]], charge: bool) -> None:
    """Quantized, the minute bound still holds, and over any interval the quantum bucket admits at most its
    capacity (or the one larger request let into it empty) plus what refilled meanwhile."""
    buckets = PoolBuckets(Limits(rpm=RPM, tpm=TPM), quantum_s=QUANTUM)
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for gap, cost in pattern:
        now += gap
        if buckets.admit(1, cost, now, count_refused=charge) is None:
            admitted.append((now, cost))
    requests = [(t, 1) for t, _ in admitted]
    _check_window_bound(requests, RPM, 60.0)
    _check_window_bound(admitted, TPM, 60.0)
    for series, capacity, rate in ((requests, RPM * QUANTUM / 60, RPM / 60), (admitted, TPM_QUANTUM, TPM / 60)):
        for i, (start, _) in enumerate(series):
            total, largest = 0, 0
            for t, cost in series[i:]:
                total += cost
                largest = max(largest, cost)
                assert total <= max(capacity, largest) + (t - start) * rate + 1e-6, (start, t, total)


@settings(max_examples=150, deadline=None)
@given(arrivals, st.booleans(), st.booleans())
def test_waiting_the_announced_time_is_enough_with_every_rule(
    pattern: list[tuple[float, int]], quantized: bool, charge: bool
) -> None:
    """Quantum buckets, the ramp and charged refusals included: retried after exactly the announced wait
    (nothing else in between), a refused request is admitted. One exception, by design: a bucket refusal's
    wait speaks for the buckets only (the ramp is checked after them), so the retry may meet one slow_down,
    whose wait is then enough."""
    ramp = Ramp(factor=2.0, window_s=15.0, floor=0.5)
    buckets = PoolBuckets(Limits(rpm=RPM, tpm=TPM), quantum_s=QUANTUM if quantized else None, ramp=ramp)
    now = 0.0
    for gap, cost in pattern:
        now += gap
        refusal = buckets.admit(1, cost, now, count_refused=charge)
        if refusal is not None and not refusal.too_large:
            assert refusal.wait > 0
            now += refusal.wait
            again = buckets.admit(1, cost, now, count_refused=charge)
            if again is not None:
                assert again.slow_down and not refusal.slow_down
                now += again.wait
                assert buckets.admit(1, cost, now, count_refused=charge) is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=10.0, allow_nan=False), min_size=1, max_size=150))
def test_ramp_never_admits_more_than_its_allowance(gaps: list[float]) -> None:
    """Per window: at most max(floor share, factor × the previous window), or the window's first request."""
    ramp = Ramp(factor=2.0, window_s=15.0, floor=0.5)
    buckets = PoolBuckets(Limits(rpm=1_000), ramp=ramp)  # the bucket never binds at these rates
    floor = 0.5 * 1_000 * 15 / 60
    per_window: dict[int, int] = {}
    now = 0.0
    for gap in gaps:
        now += gap
        if buckets.admit(1, 0, now) is None:
            w = math.floor(now / 15.0 + 1e-12)
            per_window[w] = per_window.get(w, 0) + 1
    for w, n in per_window.items():
        assert n <= max(floor, 2.0 * per_window.get(w - 1, 0), 1)
