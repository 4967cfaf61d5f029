"""GCRA: a continuously refilling bucket as one number.

A bucket of capacity ``limit`` refilled over ``window`` seconds is the Generic Cell Rate Algorithm with
emission interval ``T = window / limit`` and burst tolerance ``window``. Its whole state is the *theoretical
arrival time* ``tat``: the instant at which the bucket would be full again. Admitting ``cost`` units moves
``tat`` forward by ``cost × T``; a request fits while ``tat - now <= window``.

This module is pure arithmetic (no clock, no locks), shared by the simulator's enforcement, the client's
limiter and the Lua scripts that do the same sums inside Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Admission", "Bucket", "Rate", "admit_all"]


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` units per ``window`` seconds (capacity ``limit``, refilled continuously)."""

    limit: float
    window: float

    def __post_init__(self) -> None:
        if not (self.limit > 0 and self.window > 0 and math.isfinite(self.limit) and math.isfinite(self.window)):
            raise ValueError(f"a rate needs a positive limit and window, got {self.limit}/{self.window}s")

    @property
    def interval(self) -> float:
        """Seconds to refill one unit."""
        return self.window / self.limit


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of asking a bucket for ``cost`` units at ``now``."""

    allowed: bool
    wait: float  # seconds until the request would fit (0 when allowed; inf when it never can)
    tat: float  # the bucket's tat after the decision (unchanged when refused)


@dataclass(slots=True)
class Bucket:
    """One GCRA bucket: a rate and its tat. Mutable; callers serialise access."""

    rate: Rate
    tat: float = -math.inf

    def check(self, cost: float, now: float) -> Admission:
        """Would ``cost`` fit now? Does not change the bucket."""
        if cost > self.rate.limit:
            return Admission(False, math.inf, self.tat)
        base = max(self.tat, now)
        new_tat = base + cost * self.rate.interval
        allow_at = new_tat - self.rate.window
        if allow_at <= now + 1e-9:
            return Admission(True, 0.0, new_tat)
        return Admission(False, allow_at - now, self.tat)

    def consume(self, cost: float, now: float) -> Admission:
        decision = self.check(cost, now)
        if decision.allowed:
            self.tat = decision.tat
        return decision

    def force(self, cost: float, now: float) -> None:
        """Charge ``cost`` even past the limit (usage discovered after the fact), or refund when negative."""
        base = max(self.tat, now)
        self.tat = max(now, base + cost * self.rate.interval) if cost < 0 else base + cost * self.rate.interval

    def remaining(self, now: float) -> float:
        """Units that could be admitted right now (the ``x-ratelimit-remaining-*`` value, unfloored)."""
        backlog = max(self.tat, now) - now
        return max(0.0, (self.rate.window - backlog) / self.rate.interval)

    def used(self, now: float) -> float:
        return self.rate.limit - self.remaining(now)

    def reset(self, now: float) -> float:
        """Seconds until the bucket is full again (the ``x-ratelimit-reset-*`` value)."""
        return max(0.0, self.tat - now)

    def set_remaining(self, remaining: float, now: float) -> None:
        """Make the bucket show ``remaining`` units at ``now`` (used to adopt the server's view)."""
        remaining = min(max(remaining, 0.0), self.rate.limit)
        self.tat = now + (self.rate.limit - remaining) * self.rate.interval


def admit_all(buckets: list[tuple[Bucket, float]], now: float) -> tuple[bool, float, int]:
    """Admit a request that costs something in several buckets at once, all or nothing.

    Returns ``(allowed, wait, index)``: when refused, ``wait`` is the longest wait among the refusing
    buckets and ``index`` the position of the first bucket that refused (the one the error names).
    """
    decisions = [b.check(cost, now) for b, cost in buckets]
    refused = [i for i, d in enumerate(decisions) if not d.allowed]
    if refused:
        return False, max(decisions[i].wait for i in refused), refused[0]
    for (bucket, _), d in zip(buckets, decisions, strict=True):
        bucket.tat = d.tat
    return True, 0.0, -1
