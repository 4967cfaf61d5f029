"""Rate-limit enforcement: four GCRA buckets (RPM, TPM, RPD, TPD) per organization and model (or pool).

Sans-IO: every method takes ``now``; callers (the simulator state) hold the lock. The bucket arithmetic is
:mod:`ratepilot.limits.gcra` (the client's limiter keeps the same sums in ``limits/core.py`` and its Lua
scripts, in step with the server model its property tests check).

Rules (documented in the README):

* A request is admitted only if every configured bucket has room for it (1 request; its admission cost in
  tokens). Refused: nothing is charged in the token buckets; with ``count_refused`` the request still costs
  one request in the request buckets (forced past the limit: "continuously resending won't work").
* A request whose token cost exceeds the TPM (or TPD) limit itself is "Request too large", never admitted.
* The error names the refusing bucket with the longest wait; its "Used" is ``limit - remaining`` rounded,
  and "try again in" is the time until the request would be admitted.
* Headers report, for requests and for tokens, the minute or day bucket with less room (a daily limit
  shows up in the same ``-requests`` / ``-tokens`` headers, as on the real API).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..limits.gcra import Bucket, Rate
from ..protocol.errors import LimitKind
from ..protocol.headers import DimensionState, RateLimitHeaders
from .config import Limits

__all__ = ["Enforcer", "PoolBuckets", "Refusal"]

_KINDS = (LimitKind.RPM, LimitKind.TPM, LimitKind.RPD, LimitKind.TPD)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the bucket, and the numbers for the error message."""

    kind: LimitKind
    limit: int
    used: int
    requested: int
    wait: float  # seconds until the request would be admitted (inf: never, too large)
    too_large: bool = False


class PoolBuckets:
    """The four buckets of one (organization, model-or-pool); a dimension without a limit has no bucket.

    Kept lean: this runs on every request, so kinds are resolved once here rather than per call.
    """

    __slots__ = ("_request_dims", "_token_dims", "buckets")

    def __init__(self, limits: Limits) -> None:
        self.buckets: dict[LimitKind, Bucket] = {}
        for kind, limit in zip(_KINDS, (limits.rpm, limits.tpm, limits.rpd, limits.tpd), strict=True):
            if limit:
                self.buckets[kind] = Bucket(Rate(float(limit), kind.window))
        # (kind, bucket) pairs, minute bucket before day bucket (a tie in the headers reports the minute one).
        self._request_dims: list[tuple[LimitKind, Bucket]] = [
            (k, self.buckets[k]) for k in (LimitKind.RPM, LimitKind.RPD) if k in self.buckets
        ]
        self._token_dims: list[tuple[LimitKind, Bucket]] = [
            (k, self.buckets[k]) for k in (LimitKind.TPM, LimitKind.TPD) if k in self.buckets
        ]

    def _costs(self, requests: int, tokens: int) -> list[tuple[LimitKind, Bucket, int]]:
        costs: list[tuple[LimitKind, Bucket, int]] = [(kind, bucket, requests) for kind, bucket in self._request_dims]
        if tokens:  # a request with no token cost (a GET) does not touch the token buckets at all
            costs.extend((kind, bucket, tokens) for kind, bucket in self._token_dims)
        return costs

    def admit(self, requests: int, tokens: int, now: float, *, count_refused: bool = True) -> Refusal | None:
        """Charge ``requests`` and ``tokens`` in every bucket, all or nothing. ``None`` = admitted."""
        costs = self._costs(requests, tokens)
        decisions = []
        refused = False
        for kind, bucket, cost in costs:
            if cost > bucket.rate.limit:
                return Refusal(kind, int(bucket.rate.limit), 0, cost, math.inf, too_large=True)
            decision = bucket.check(cost, now)
            refused = refused or not decision.allowed
            decisions.append((bucket, decision.tat))
        if not refused:
            for bucket, tat in decisions:
                bucket.tat = tat
            return None
        if count_refused and requests:
            for _, bucket in self._request_dims:
                bucket.force(requests, now)
        # After charging the refused request, the wait is how long until this request would fit everywhere.
        waits = [(kind, bucket, cost, bucket.check(cost, now).wait) for kind, bucket, cost in costs]
        kind, bucket, cost, wait = max(waits, key=lambda w: w[3])
        limit = int(bucket.rate.limit)
        used = min(limit, round(bucket.used(now)))
        return Refusal(kind, limit, used, cost, wait)

    def settle(self, token_delta: int, now: float) -> None:
        """Correct the token buckets by ``actual - charged`` (may refund, may push past the limit)."""
        if token_delta:
            for _, bucket in self._token_dims:
                bucket.force(token_delta, now)

    def charge_requests(self, requests: int, now: float) -> None:
        """Count requests unconditionally (requests that are answered without admission, e.g. errors)."""
        for _, bucket in self._request_dims:
            bucket.force(requests, now)

    def headers(self, now: float) -> RateLimitHeaders:
        return RateLimitHeaders(requests=_binding(self._request_dims, now), tokens=_binding(self._token_dims, now))


def _binding(dims: list[tuple[LimitKind, Bucket]], now: float) -> DimensionState | None:
    """The dimension with less room binds; on a tie the per-minute one (listed first) is reported."""
    best: DimensionState | None = None
    for _, bucket in dims:
        remaining = math.floor(bucket.remaining(now) + 1e-9)
        if best is None or remaining < best.remaining:
            best = DimensionState(int(bucket.rate.limit), remaining, bucket.reset(now))
    return best


class Enforcer:
    """Buckets for every (organization, pool) seen so far, created on first use from their limits."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], PoolBuckets] = {}

    def buckets(self, org: str, pool: str, limits: Limits) -> PoolBuckets:
        key = (org, pool)
        found = self.pools.get(key)
        if found is None:
            found = self.pools[key] = PoolBuckets(limits)
        return found

    def reset(self) -> None:
        self.pools.clear()
