"""How many requests to keep in flight: derived from the learned limits and the observed latency.

There is no worker count to guess. The limiter decides *when* each request may go; this window only bounds
how many are issued ahead of it (each one waiting inside the limiter costs a task and a request body), so it
must be large enough that the limiter is never starved:

    window = instant capacity  +  2 × sustained rate × latency

* instant capacity: what the server says can be admitted right now (``remaining`` requests, and
  ``remaining`` tokens / average tokens per request) — at the start of a job the whole first minute's
  capacity, so it can go out at once, exactly as the server allows;
* sustained rate × latency (Little's law): requests needed in flight to keep the refill rate busy;
  latency is a low percentile of recent request durations (durations include time spent waiting in the
  limiter, the low percentile is the requests that did not wait), doubled for jitter.

Clamped to ``[floor, ceiling]``. Before any response: ``floor`` (the limiter lets one probe through anyway,
until the first headers teach it the limits).
"""

from __future__ import annotations

import math
from collections import deque

from ..protocol.headers import RateLimitHeaders

__all__ = ["InFlightWindow"]


class InFlightWindow:
    """Pure: feed it observations, read :attr:`size`."""

    def __init__(self, *, floor: int = 8, ceiling: int = 1024, samples: int = 64) -> None:
        if floor < 1 or ceiling < floor:
            raise ValueError("need 1 <= floor <= ceiling")
        self.floor = floor
        self.ceiling = ceiling
        self.size = floor
        self._durations: deque[float] = deque(maxlen=samples)
        self._tokens_per_request = 0.0

    def observe(self, headers: RateLimitHeaders | None, duration_s: float, tokens: int) -> int:
        """Record one finished request (its headers, wall duration, tokens used); return the new size."""
        self._durations.append(max(0.0, duration_s))
        if tokens > 0:
            # EWMA: recent requests describe the rest of the job better than the first ones.
            t = self._tokens_per_request
            self._tokens_per_request = float(tokens) if t == 0 else 0.9 * t + 0.1 * tokens
        if headers is not None and not headers.empty:
            self.size = self._compute(headers)
        return self.size

    @property
    def latency_s(self) -> float:
        if not self._durations:
            return 0.0
        ordered = sorted(self._durations)
        return ordered[len(ordered) // 4]

    def _compute(self, h: RateLimitHeaders) -> int:
        per_req = max(1.0, self._tokens_per_request)
        instant = math.inf
        rate = math.inf  # requests per second
        if h.requests is not None:
            instant = min(instant, h.requests.remaining)
            rate = min(rate, h.requests.limit / 60.0)
        if h.tokens is not None:
            instant = min(instant, h.tokens.remaining / per_req)
            rate = min(rate, h.tokens.limit / 60.0 / per_req)
        if math.isinf(instant) or math.isinf(rate):
            return self.size
        want = instant + 2.0 * rate * max(self.latency_s, 0.05)
        return int(min(self.ceiling, max(self.floor, math.ceil(want))))
