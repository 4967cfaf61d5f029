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
from ratepilot.sim.enforcement import PoolBuckets

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
