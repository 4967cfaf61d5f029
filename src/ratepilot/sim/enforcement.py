"""Rate-limit enforcement: GCRA buckets (RPM, TPM, RPD, TPD) per organization and model (or pool), optionally
quantized, plus an optional ramp limit; and the same buckets per project, for projects with limits of their own.

Sans-IO: every method takes ``now``; callers (the simulator state) hold the lock. The bucket arithmetic is
:mod:`ratepilot.limits.gcra` (the client's limiter keeps the same sums in ``limits/core.py`` and its Lua
scripts, in step with the server model its property tests check).

Rules (documented in docs/simulator.md):

* A request is admitted only if every configured bucket has room for it (1 request; its admission cost in
  tokens). Refused: nothing is charged in the token buckets; with ``count_refused`` the request still costs
  one request in every request bucket (forced past the limit: "continuously resending won't work").
* A request whose token cost exceeds the TPM (or TPD) limit itself is "Request too large", never admitted.
* Quantized (``quantum_s``): each minute dimension also has a quantum bucket with the same refill rate and a
  capacity of ``limit × quantum_s / 60``: in GCRA terms the same emission interval and a burst tolerance of
  ``quantum_s`` instead of 60 s. A request larger than that capacity (but within the minute limit) is
  admitted when the quantum bucket is empty, then pushes it past its capacity: large prompts are slowed,
  never deadlocked (the real API serves a 10k-token prompt under a 30k TPM limit).
* The error names the refusing dimension with the longest wait (a quantum bucket is named as its minute
  dimension); "Used" is the minute (or day) bucket's ``limit - remaining`` rounded, so a quantum refusal
  shows room left, as the real API's do; "try again in" is the time until every bucket would admit it.
* Ramp (``ramp``): see :class:`Ramp`. Checked only once the buckets admit; a refusal is ``slow_down``.
* Headers report, for requests and for tokens, the minute or day bucket with less room (a daily limit
  shows up in the same ``-requests`` / ``-tokens`` headers, as on the real API); quantum buckets never.
* Projects: a request of a project with limits must fit its organization's buckets *and* its project's
  (:meth:`PoolBuckets.admit` with ``project=``), all or nothing. A refused request (with ``count_refused``)
  costs one request in the request buckets of both: the real API's rule ("unsuccessful requests contribute")
  does not say which, and a client retrying early should push its wait further whichever bucket refused it.
  Project buckets are quantized like the organization's; the ramp limit is the organization's alone. Their
  TPM bucket is reported as ``x-ratelimit-*-project-tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..limits.gcra import Bucket, Rate
from ..protocol.errors import LimitKind
from ..protocol.headers import DimensionState, RateLimitHeaders
from .config import Limits, SimConfig

__all__ = ["Enforcer", "PoolBuckets", "Ramp", "Refusal", "ideal_admissions"]

_KINDS = (LimitKind.RPM, LimitKind.TPM, LimitKind.RPD, LimitKind.TPD)
_EPS = 1e-9  # the same tolerance as gcra.Bucket.check: float sums must not refuse an exact retry
_NO_WINDOW = -(2**62)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the bucket, and the numbers for the error message."""

    kind: LimitKind
    limit: int
    used: int
    requested: int
    wait: float  # seconds until the request would be admitted (inf: never, too large)
    too_large: bool = False
    slow_down: bool = False  # refused by the ramp limit (429 ``slow_down``), not by a bucket
    project: bool = False  # refused by a bucket of the request's project, not of its organization


@dataclass(frozen=True, slots=True)
class Ramp:
    """The ramp limit: how fast admitted traffic may grow.

    The clock is cut into windows of ``window_s`` seconds aligned to multiples of ``window_s``. Per minute
    dimension (requests; tokens at their admission cost), one window may admit at most
    ``max(floor × limit × window_s / 60, factor × what the previous window admitted)``; the first request of
    a window always passes (a request larger than the allowance is slowed, not deadlocked).
    """

    factor: float
    window_s: float = 15.0
    floor: float = 0.5

    @classmethod
    def of(cls, config: SimConfig) -> Ramp | None:
        if config.ramp_factor is None:
            return None
        return cls(config.ramp_factor, config.ramp_window_s, config.ramp_floor)


# One admission check: (dimension named in the error, bucket, bucket named in the error, quantum?, tokens?).
_Check = tuple[LimitKind, Bucket, Bucket, bool, bool]


def _check(bucket: Bucket, quantum: bool, cost: float, now: float) -> tuple[bool, float, float]:
    """``(allowed, wait, tat if admitted)``, with the large-request rule for quantum buckets."""
    if quantum and cost > bucket.rate.limit:
        # Larger than the quantum: admitted into an empty quantum bucket, which it then overfills.
        tat = bucket.tat
        if tat > now + _EPS:
            return False, tat - now, tat
        return True, 0.0, max(tat, now) + cost * bucket.rate.interval
    decision = bucket.check(cost, now)
    return decision.allowed, decision.wait, decision.tat


class PoolBuckets:
    """The buckets of one (organization, model-or-pool); a dimension without a limit has no bucket.

    Kept lean: this runs on every request, so the checks are resolved once here rather than per call, and
    the quantum buckets and the ramp cost nothing when they are off.
    """

    __slots__ = (
        "_all_checks",
        "_ramp",
        "_ramp_cur_req",
        "_ramp_cur_tok",
        "_ramp_floor_req",
        "_ramp_floor_tok",
        "_ramp_idx",
        "_ramp_prev_req",
        "_ramp_prev_tok",
        "_request_buckets",
        "_request_checks",
        "_request_dims",
        "_token_buckets",
        "_token_dims",
        "buckets",
        "quantum",
    )

    def __init__(self, limits: Limits, *, quantum_s: float | None = None, ramp: Ramp | None = None) -> None:
        self.buckets: dict[LimitKind, Bucket] = {}
        self.quantum: dict[LimitKind, Bucket] = {}  # RPM/TPM -> its quantum bucket
        for kind, limit in zip(_KINDS, (limits.rpm, limits.tpm, limits.rpd, limits.tpd), strict=True):
            if limit:
                self.buckets[kind] = Bucket(Rate(float(limit), kind.window))
                if quantum_s is not None and kind.window == 60.0:
                    # Capacity limit × Q / 60 over Q seconds: the minute bucket's refill rate, Q's tolerance.
                    self.quantum[kind] = Bucket(Rate(limit * quantum_s / 60.0, quantum_s))
        # (kind, bucket) pairs, minute bucket before day bucket (a tie in the headers reports the minute one).
        self._request_dims: list[tuple[LimitKind, Bucket]] = [
            (k, self.buckets[k]) for k in (LimitKind.RPM, LimitKind.RPD) if k in self.buckets
        ]
        self._token_dims: list[tuple[LimitKind, Bucket]] = [
            (k, self.buckets[k]) for k in (LimitKind.TPM, LimitKind.TPD) if k in self.buckets
        ]
        request_checks: list[_Check] = []
        token_checks: list[_Check] = []
        for checks, dims, is_tokens in (
            (request_checks, self._request_dims, False),
            (token_checks, self._token_dims, True),
        ):
            for kind, bucket in dims:
                checks.append((kind, bucket, bucket, False, is_tokens))
                if kind in self.quantum:  # right after its minute bucket: a tie names the same dimension
                    checks.append((kind, self.quantum[kind], bucket, True, is_tokens))
        self._request_checks = tuple(request_checks)
        self._all_checks = tuple(request_checks + token_checks)
        self._request_buckets = tuple(c[1] for c in request_checks)
        self._token_buckets = tuple(c[1] for c in token_checks)
        self._ramp = ramp
        self._ramp_idx = _NO_WINDOW
        self._ramp_cur_req = self._ramp_prev_req = 0.0
        self._ramp_cur_tok = self._ramp_prev_tok = 0.0
        self._ramp_floor_req: float | None = None
        self._ramp_floor_tok: float | None = None
        if ramp is not None:
            share = ramp.floor * ramp.window_s / 60.0
            self._ramp_floor_req = limits.rpm * share if limits.rpm else None
            self._ramp_floor_tok = limits.tpm * share if limits.tpm else None

    def admit(
        self,
        requests: int,
        tokens: int,
        now: float,
        *,
        count_refused: bool = True,
        project: PoolBuckets | None = None,
    ) -> Refusal | None:
        """Charge ``requests`` and ``tokens`` in every bucket, all or nothing. ``None`` = admitted.

        ``project``: the buckets of the request's project in the same pool, which must admit it too; nothing
        is charged in either unless both admit (a refusal with ``count_refused`` costs one request in the
        request buckets of both). The ramp limit is this (the organization's) pool's alone.
        """
        decisions: list[tuple[Bucket, float]] = []
        refused = self._decide(requests, tokens, now, decisions)
        if isinstance(refused, Refusal):  # "Request too large"
            return refused
        if project is not None:
            in_project = project._decide(requests, tokens, now, decisions)
            if isinstance(in_project, Refusal):
                return replace(in_project, project=True)
            refused = refused or in_project
        if not refused and self._ramp is not None:
            slow = self._ramp_refusal(requests, tokens, now)
            if slow is not None:
                if count_refused and requests:
                    self.charge_requests(requests, now, project=project)
                    # Charged, it may also have to wait for the buckets (rarely longer than the window).
                    wait = max(slow.wait, self._longest_wait(requests, tokens, now, project)[0])
                    slow = Refusal(slow.kind, slow.limit, slow.used, slow.requested, wait, slow_down=True)
                return slow
        if not refused:
            for bucket, tat in decisions:
                bucket.tat = tat
            if self._ramp is not None:
                self._ramp_cur_req += requests
                self._ramp_cur_tok += tokens
            return None
        if count_refused and requests:
            self.charge_requests(requests, now, project=project)
        # After charging the refused request, the wait is how long until this request would fit everywhere.
        wait, check, in_project_bucket = self._longest_wait(requests, tokens, now, project)
        kind, _, named, _, is_tokens = check
        limit = int(named.rate.limit)
        used = min(limit, round(named.used(now)))
        return Refusal(kind, limit, used, tokens if is_tokens else requests, wait, project=in_project_bucket)

    def _decide(self, requests: int, tokens: int, now: float, decisions: list[tuple[Bucket, float]]) -> bool | Refusal:
        """Check every bucket without charging: appends ``(bucket, tat if admitted)`` to ``decisions`` and returns
        whether any bucket refuses, or the "Request too large" refusal."""
        checks = self._all_checks if tokens else self._request_checks  # no token cost (a GET): no token buckets
        refused = False
        for kind, bucket, _, quantum, is_tokens in checks:
            cost = tokens if is_tokens else requests
            if quantum:
                allowed, _, tat = _check(bucket, True, cost, now)
            elif cost > bucket.rate.limit:
                return Refusal(kind, int(bucket.rate.limit), 0, cost, math.inf, too_large=True)
            else:
                decision = bucket.check(cost, now)
                allowed, tat = decision.allowed, decision.tat
            refused = refused or not allowed
            decisions.append((bucket, tat))
        return refused

    def _longest_wait(
        self, requests: int, tokens: int, now: float, project: PoolBuckets | None
    ) -> tuple[float, _Check, bool]:
        """The longest wait of any bucket (of this pool, then of ``project``), its check, and whether it is the
        project's. On a tie the organization's is named."""
        longest, best = _longest(self._all_checks if tokens else self._request_checks, requests, tokens, now)
        in_project = False
        if project is not None:
            p_longest, p_best = _longest(
                project._all_checks if tokens else project._request_checks, requests, tokens, now
            )
            if p_best is not None and (best is None or p_longest > longest):
                longest, best, in_project = p_longest, p_best, True
        assert best is not None  # only asked after a refusal, which some bucket made
        return longest, best, in_project

    def _ramp_refusal(self, requests: int, tokens: int, now: float) -> Refusal | None:
        """The ramp's verdict on a request the buckets admit (rolls the windows forward; charges nothing)."""
        ramp = self._ramp
        assert ramp is not None
        idx = math.floor((now + _EPS) / ramp.window_s)
        if idx != self._ramp_idx:
            if idx == self._ramp_idx + 1:
                self._ramp_prev_req, self._ramp_prev_tok = self._ramp_cur_req, self._ramp_cur_tok
            else:  # a whole window (or more) without traffic: the ramp starts again from its floor
                self._ramp_prev_req = self._ramp_prev_tok = 0.0
            self._ramp_cur_req = self._ramp_cur_tok = 0.0
            self._ramp_idx = idx
        kind: LimitKind | None = None
        floor_req, floor_tok = self._ramp_floor_req, self._ramp_floor_tok
        cur_req, cur_tok = self._ramp_cur_req, self._ramp_cur_tok
        if (
            floor_req is not None
            and requests
            and cur_req
            and cur_req + requests > max(floor_req, ramp.factor * self._ramp_prev_req) + _EPS
        ):
            kind, used, cost = LimitKind.RPM, cur_req, requests
        elif (
            floor_tok is not None
            and tokens
            and cur_tok
            and cur_tok + tokens > max(floor_tok, ramp.factor * self._ramp_prev_tok) + _EPS
        ):
            kind, used, cost = LimitKind.TPM, cur_tok, tokens
        if kind is None:
            return None
        wait = (idx + 1) * ramp.window_s - now
        limit = int(self.buckets[kind].rate.limit)
        return Refusal(kind, limit, round(used), cost, max(wait, _EPS), slow_down=True)

    def settle(self, token_delta: int, now: float, *, project: PoolBuckets | None = None) -> None:
        """Correct the token buckets (and ``project``'s) by ``actual - charged`` (may refund, may push past the
        limit)."""
        if token_delta:
            for bucket in self._token_buckets:
                bucket.force(token_delta, now)
            if project is not None:
                project.settle(token_delta, now)

    def charge_requests(self, requests: int, now: float, *, project: PoolBuckets | None = None) -> None:
        """Count requests unconditionally in these request buckets and ``project``'s (requests answered without
        admission, e.g. errors)."""
        for bucket in self._request_buckets:
            bucket.force(requests, now)
        if project is not None:
            project.charge_requests(requests, now)

    def headers(self, now: float, project: PoolBuckets | None = None) -> RateLimitHeaders:
        """The ``x-ratelimit-*`` values; ``project``'s TPM bucket, if it has one, as the ``-project-tokens``."""
        return RateLimitHeaders(
            requests=_binding(self._request_dims, now),
            tokens=_binding(self._token_dims, now),
            project_tokens=None if project is None else project.minute_tokens(now),
        )

    def minute_tokens(self, now: float) -> DimensionState | None:
        """The TPM bucket's state (``None`` without a TPM limit)."""
        bucket = self.buckets.get(LimitKind.TPM)
        return None if bucket is None else _binding([(LimitKind.TPM, bucket)], now)


def _longest(checks: tuple[_Check, ...], requests: int, tokens: int, now: float) -> tuple[float, _Check | None]:
    """The longest wait among ``checks`` and its check (``None``: no checks)."""
    best: _Check | None = None
    longest = -1.0
    for check in checks:
        _, bucket, _, quantum, is_tokens = check
        wait = _check(bucket, quantum, tokens if is_tokens else requests, now)[1]
        if wait > longest:  # strictly: on a tie the first (minute before quantum before day) is named
            longest, best = wait, check
    return longest, best


def _binding(dims: list[tuple[LimitKind, Bucket]], now: float) -> DimensionState | None:
    """The dimension with less room binds; on a tie the per-minute one (listed first) is reported."""
    best: DimensionState | None = None
    for _, bucket in dims:
        remaining = math.floor(bucket.remaining(now) + 1e-9)
        if best is None or remaining < best.remaining:
            best = DimensionState(int(bucket.rate.limit), remaining, bucket.reset(now))
    return best


class Enforcer:
    """Buckets for every (organization, pool) and (organization, project, pool) seen so far, created on first use
    from their limits."""

    def __init__(self, *, quantum_s: float | None = None, ramp: Ramp | None = None) -> None:
        self.pools: dict[tuple[str, str], PoolBuckets] = {}
        self.project_pools: dict[tuple[str, str, str], PoolBuckets] = {}
        self.quantum_s = quantum_s
        self.ramp = ramp

    @classmethod
    def for_config(cls, config: SimConfig) -> Enforcer:
        return cls(quantum_s=config.quantum_s, ramp=Ramp.of(config))

    def buckets(self, org: str, pool: str, limits: Limits, *, ramped: bool = True) -> PoolBuckets:
        """The pool's buckets; ``ramped=False`` leaves the ramp limit out (the org-wide bucket GETs use)."""
        key = (org, pool)
        found = self.pools.get(key)
        if found is None:
            ramp = self.ramp if ramped else None
            found = self.pools[key] = PoolBuckets(limits, quantum_s=self.quantum_s, ramp=ramp)
        return found

    def project_buckets(self, org: str, project: str, pool: str, limits: Limits) -> PoolBuckets:
        """The buckets of ``project`` (of ``org``) in ``pool``: quantized like the organization's, never ramped."""
        key = (org, project, pool)
        found = self.project_pools.get(key)
        if found is None:
            found = self.project_pools[key] = PoolBuckets(limits, quantum_s=self.quantum_s)
        return found

    def reset(self) -> None:
        self.pools.clear()
        self.project_pools.clear()


def ideal_admissions(config: SimConfig, model: str, costs: Sequence[tuple[int, int]]) -> list[float]:
    """Admission times (seconds from 0) of a perfect client of one fresh organization sending to ``model``.

    Each cost is ``(admission tokens, actual tokens)``. Requests go in order, each at the earliest instant
    every configured rule admits it (minute and day buckets, quantum buckets, the ramp; full buckets at 0);
    the token buckets are settled to the actual usage at admission (with ``settle_actual_tokens``). Greedy
    is optimal here: admitting a request earlier never delays the ones after it by more than it gained.

    Computed with the simulator's own :class:`PoolBuckets`, so the model cannot drift from the server: a
    dry run that, on each refusal, jumps to the instant the refusal names (refusals are not charged: a
    perfect client sends nothing that is refused). Raises ``ValueError`` for an unknown model or a request
    that can never be admitted ("Request too large").
    """
    if config.model(model) is None:
        raise ValueError(f"unknown model {model!r}")
    _, limits = config.pool_limits(model)
    buckets = PoolBuckets(limits, quantum_s=config.quantum_s, ramp=Ramp.of(config))
    settle = config.settle_actual_tokens
    out: list[float] = []
    t = 0.0
    for i, (admission, actual) in enumerate(costs):
        while (refusal := buckets.admit(1, admission, t, count_refused=False)) is not None:
            if not math.isfinite(refusal.wait):
                raise ValueError(f"request {i} ({admission} tokens) can never be admitted: {refusal.kind.phrase}")
            # Never stand still: float rounding could name a wait too small to move t.
            t = max(t + refusal.wait, math.nextafter(t, math.inf))
        out.append(t)
        if settle and actual != admission:
            buckets.settle(actual - admission, t)
    return out
