"""The sans-IO core of the limiter: one scope's state and the pure operations on it.

No clock, no lock, no I/O: every function takes ``now`` (the store's time) and mutates a :class:`ScopeState`.
The memory and SQLite stores load a state, apply one of these functions and save it in one transaction;
the Redis store runs the same arithmetic in Lua (``limits/lua/*.lua``, kept line-for-line parallel to this
module; the shared test body in ``tests/limits`` runs every behaviour against all three).

Each known dimension is a GCRA bucket (see :mod:`ratepilot.limits.gcra`): ``tat`` is the instant the
bucket would be full again and ``lim`` the effective limit, so the units in use are ``(tat - now) / (window
/ lim)``. A reservation is admitted in every known dimension at once, or in none.

The headers describe the minute bucket, but a server may enforce the same rate over shorter windows (OpenAI:
"60,000 requests/minute may be enforced as 1,000 requests/second"). So the burst a dimension may spend at once
is *learned* (``tol``, seconds of refill; see :func:`refuse` and docs/limiter.md, "Learned burst"):

* **slow start** — a dimension first seen in headers may run ``TOL_START`` seconds ahead of the refill; a
  request answered after being admitted ``b`` seconds ahead raises the allowance to ``(1 + SS_GAIN) × b`` (or
  ``b`` plus its own cost, if more), so
  while bursting it grows ×1.125 per round trip, up to the whole window when the server allows it (the first
  minute's capacity is still used), and overshoots a shorter server window by at most an eighth;
* **cut** — a rate-limit refusal of a request admitted ``b`` seconds ahead of the refill, while the server's
  headers showed room, proves the server's window is shorter than ``b``: ``tol = BURST_CUT × b``. Only
  requests admitted after the last cut count (``tseq``), so one burst is one cut, not one per refused request;
* **congestion avoidance** — after a cut, every answered request adds only ``CA_GAIN`` of its cost (+0.12 s
  per minute at full pace), so a refusal recurs every few minutes at most;
* **pace** — when even a one-request allowance is refused (the rate, not the burst, is too high) or the server
  says ``slow_down``, admissions are spaced ``1 / pace`` times wider; ``pace`` recovers linearly to 1 at
  ``PACE_RECOVERY`` per second. A ``slow_down`` cuts it by 0.75 to 0.95, deeper the longer its wait
  (:func:`slow_down_cut`).

Smaller bursts cost no throughput: the bucket refills at the full rate whatever the burst allowance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .types import DIM_INDEX, DIMENSIONS, N_DIMS, DimensionView

__all__ = [
    "DimObservation",
    "Observation",
    "Refusal",
    "ReserveParams",
    "Reserved",
    "ScopeState",
    "Wait",
    "adjust",
    "observe",
    "penalize",
    "refuse",
    "reserve",
    "view",
]

EPS = 1e-9
FOREIGN_TAU = 2.0  # seconds: time constant of the foreign-traffic rate estimate
WINDOWS = tuple(d.window for d in DIMENSIONS)
MINUTE = tuple(w <= 60.0 for w in WINDOWS)  # the dimensions a shorter enforcement window and the pace apply to
TOL_START = 1.0  # seconds of refill a newly learned minute dimension may burst (the documented 1 s quantum)
TOL_MIN = 1e-3  # a cut never goes below this: with less than one request's worth, admission is strict pacing
SS_GAIN = 0.125  # slow start: an answered request raises the allowance to (1 + SS_GAIN) x its backlog
CA_GAIN = 0.002  # after a cut: ... this share (+0.12 s per minute at full pace)
BURST_CUT = 0.5  # a refused burst of b seconds leaves an allowance of BURST_CUT x b
RATE_CUT = 0.8  # a refusal under strict pacing slows the pace by this factor
SLOW_DOWN_CUT = 0.75  # a slow_down refusal slows the pace to three quarters at most (a long wait) ...
SLOW_DOWN_TRIM = 0.95  # ... and to 0.95 at least (one that asks for no wait at all)
PACE_RECOVERY = 1 / 60  # the pace recovers by this much per second (from 0.75 to full in 15 s: gradually)
PACE_MIN = 0.05
MINUTE_EXPLAINS = 0.5  # a refusal with more than this share of the window in use teaches no burst
NO_CEILING = (0.0,) * N_DIMS
_RPM, _TPM = DIM_INDEX["rpm"], DIM_INDEX["tpm"]


def _zeros() -> list[float]:
    return [0.0] * N_DIMS


@dataclass(slots=True)
class ScopeState:
    """Everything the store keeps for one scope (in the order of the stored encoding: stores/base.py)."""

    seq: int = 0  # reservations made so far
    probe_until: float = 0.0  # while limits are unknown: the probe request's lease
    blocked_until: float = 0.0  # after a 429: nothing is admitted before this
    nohdr: int = 0  # responses without headers while limits are unknown
    lim: list[float] = field(default_factory=_zeros)  # effective limit per dimension (0 = unknown)
    srv: list[float] = field(default_factory=_zeros)  # the server's limit as last reported (0 = never)
    tat: list[float] = field(default_factory=_zeros)
    frate: list[float] = field(default_factory=_zeros)  # estimated foreign traffic, units per second
    ft: list[float] = field(default_factory=_zeros)  # when frate was last updated
    tol: list[float] = field(default_factory=_zeros)  # learned burst allowance, seconds of refill (0: the window)
    tseq: list[float] = field(default_factory=_zeros)  # seq when tol was last cut (0: never: slow start)
    pace: float = 0.0  # admissions are spaced 1/pace wider in the minute dimensions (0: full pace)
    pt: float = 0.0  # when pace was last cut
    pseq: float = 0.0  # seq when pace was last cut

    @property
    def known(self) -> bool:
        """Some limit is enforced (learned from the server, or a configured ceiling)."""
        return max(self.lim) > 0

    @property
    def heard(self) -> bool:
        """The server has reported limits."""
        return max(self.srv) > 0


@dataclass(frozen=True, slots=True)
class ReserveParams:
    """Per-limiter settings a reservation needs (passed to the store on every call)."""

    ceiling: tuple[float, ...] = NO_CEILING  # configured limit per dimension (0 = none)
    probe_timeout: float = 60.0  # a probe whose response never came is forgotten after this
    blind_after: int = 3  # header-less responses before a scope without limits stops probing
    headroom: float = 0.0  # fraction of every bucket this reservation must leave free (LOW priority)
    foreign_horizon: float = 3.0  # seconds of estimated foreign traffic to keep room for
    start_burst: float = TOL_START  # the burst allowance of a dimension first limited by the ceiling


@dataclass(slots=True)  # not frozen: constructed on every reservation, and frozen init is slow
class Reserved:
    seq: int
    used: tuple[float, ...]
    charged: tuple[bool, ...]
    probe: bool
    lease: float = 0.0  # a probe's lease expiry (store time): identifies the probe when it is settled


@dataclass(slots=True)  # not frozen: constructed on every reservation, and frozen init is slow
class Wait:
    """Not admitted: try again in ``seconds`` (``probe`` = waiting for the probe's response, not for time)."""

    seconds: float
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 429 rate-limit refusal of one of our requests, as evidence (see :func:`refuse`)."""

    wait: float  # admit nothing in the scope for this long (the server's hint, or the backoff)
    seq: int  # the refused request's grant (-1: unknown: no learning)
    used: tuple[float, ...]  # units in use right after it was admitted, per dimension; < 0: no evidence there
    costs: tuple[float, ...]  # its cost per dimension
    slow_down: bool = False  # the server said its traffic grew too fast (code ``slow_down``)


@dataclass(frozen=True, slots=True)
class DimObservation:
    dim: int
    limit: float  # effective limit to adopt
    server_limit: float
    used: float  # units the server had in use when it admitted the observed request


@dataclass(frozen=True, slots=True)
class Observation:
    """A response's headers, interpreted (:func:`ratepilot.limits.learning.interpret`)."""

    dims: tuple[DimObservation, ...]  # empty: the response had no usable headers
    # A successful response: its request's units in use at admission and its cost, per dimension (the learned
    # burst grows from them); empty: not a success.
    answered: tuple[float, ...] = ()
    answered_costs: tuple[float, ...] = ()
    start_burst: float = TOL_START  # the burst allowance of a dimension seen for the first time (seconds)


def _used(st: ScopeState, d: int, now: float) -> float:
    return max(0.0, st.tat[d] - now) * st.lim[d] / WINDOWS[d]


def reserve(st: ScopeState, costs: tuple[float, ...], now: float, p: ReserveParams) -> Reserved | Wait:
    """Admit ``costs`` (units per dimension) in every known dimension, or say how long to wait."""
    if p.ceiling != NO_CEILING:
        for d in range(N_DIMS):
            if st.lim[d] <= 0 and p.ceiling[d] > 0:
                st.lim[d] = p.ceiling[d]
                st.tat[d] = now
                if MINUTE[d] and st.tol[d] <= 0:
                    st.tol[d] = min(WINDOWS[d], p.start_burst)  # a ceiling is no proof of the burst allowed
    if st.blocked_until > now + EPS:
        return Wait(st.blocked_until - now)
    # Until the server reports limits, one probe at a time, unless the ceiling gives both minute limits: a
    # ceiling on requests alone says nothing of the token limit, which a burst of large requests would overrun.
    if not st.heard and not (p.ceiling[_RPM] > 0 and p.ceiling[_TPM] > 0):
        if st.nohdr < p.blind_after:
            if st.probe_until > now + EPS:
                return Wait(st.probe_until - now, probe=True)
            st.probe_until = now + p.probe_timeout
            st.seq += 1
            return Reserved(st.seq, (0.0,) * N_DIMS, (False,) * N_DIMS, True, st.probe_until)
        if not st.known:  # the server never reports limits and none is configured: rely on 429 penalties
            st.seq += 1
            return Reserved(st.seq, (0.0,) * N_DIMS, (False,) * N_DIMS, False)
        # no headers ever, but a configured ceiling: enforce it
    wait = 0.0
    updates: list[tuple[int, float]] = []
    keep = 1.0 - p.headroom
    for d in range(N_DIMS):
        lim = st.lim[d]
        if lim <= 0:  # a zero cost is still refused by an over-full bucket, as the server does
            continue
        if 0 < st.srv[d] < costs[d]:  # larger than the server's own limit: "Request too large", never fits
            return Wait(math.inf)
        window = WINDOWS[d]
        interval = window / lim
        burst = st.tol[d] if 0 < st.tol[d] < window else window
        # Room kept for traffic we cannot see yet: what others used lately, over the feedback delay.
        foreign = min(st.frate[d] * p.foreign_horizon * interval, 0.5 * burst)
        tolerance = burst * keep - foreign
        tat = st.tat[d]
        base = tat if tat > now else now
        add = costs[d] * interval
        if st.pace > 0 and MINUTE[d]:
            add /= _pace(st, now)
        # Larger than the whole (effective) bucket: admit only into an empty bucket, so it never deadlocks.
        w = base - now if add > tolerance else base + add - tolerance - now
        if w > wait:
            wait = w
        updates.append((d, base + add))
    if wait > EPS:
        return Wait(wait)
    charged = [False] * N_DIMS
    used = [0.0] * N_DIMS
    for d, new in updates:
        st.tat[d] = new
        charged[d] = True
        used[d] = (new - now) * st.lim[d] / WINDOWS[d]
    st.seq += 1
    return Reserved(st.seq, tuple(used), tuple(charged), False)


def adjust(
    st: ScopeState,
    deltas: tuple[float, ...],
    charged: tuple[bool, ...],
    probe_hold: float,
    probe_lease: float,
    now: float,
) -> None:
    """Settle or cancel: charge (``delta > 0``) or refund (``< 0``) units in the dimensions the grant charged.

    A refund never takes a bucket below empty, so returning capacity late never creates any. For the probe's
    grant, ``probe_hold`` cuts its lease to at most that many seconds from now (0: release it; negative: not
    the probe, leave the lease alone), provided the lease is still that grant's (``probe_lease``, its expiry as
    granted): a late settle of an earlier probe must not cut a newer probe's lease.
    """
    for d in range(N_DIMS):
        if not charged[d] or st.lim[d] <= 0 or deltas[d] == 0:
            continue
        interval = WINDOWS[d] / st.lim[d]
        base = max(st.tat[d], now)
        st.tat[d] = max(now, base + deltas[d] * interval)
    if probe_hold >= 0 and st.probe_until == probe_lease:
        st.probe_until = min(st.probe_until, now + probe_hold)


def _grow(st: ScopeState, used: tuple[float, ...], costs: tuple[float, ...]) -> None:
    """An answered request widens the burst allowance: fast until the first cut, slowly after (docstring)."""
    for d in range(N_DIMS):
        tol, lim = st.tol[d], st.lim[d]
        window = WINDOWS[d]
        if tol <= 0 or tol >= window or lim <= 0 or costs[d] <= 0 or (st.pace > 0 and MINUTE[d]):
            continue  # (under a slowed pace the backlog is inflated by it: no growth from it)
        interval = window / lim
        if st.tseq[d] <= 0:
            # Slow start: the server admitted this request b seconds ahead of the refill, so it allows at least
            # b; try an eighth more, or one more such request. A client bursting grows ×1.125 per round trip;
            # one that cannot send faster (few in flight) is never held back while the server keeps answering.
            backlog = used[d] * interval
            grown = max(tol, (1.0 + SS_GAIN) * backlog, backlog + costs[d] * interval)
        else:
            grown = tol + CA_GAIN * costs[d] * interval
        st.tol[d] = min(window, grown)


def observe(st: ScopeState, obs: Observation, now: float) -> None:
    """Correct the scope's state from what the server said (see :mod:`ratepilot.limits.learning`)."""
    if obs.answered:
        _grow(st, obs.answered, obs.answered_costs)
    if not obs.dims:
        if not st.heard:
            st.nohdr += 1
            st.probe_until = 0.0
        return
    st.nohdr = 0
    st.probe_until = 0.0
    for o in obs.dims:
        d, window = o.dim, WINDOWS[o.dim]
        st.srv[d] = o.server_limit
        if MINUTE[d] and st.tol[d] <= 0 and st.tseq[d] <= 0:
            # Slow start (module docstring) from the first header of this dimension — also under a ceiling, and
            # for a state saved before the burst was learned — from at least twice what a success shows in use:
            # the server admitted that much (the probe, or others' traffic too), so one more of the same is tried,
            # and a key with more in use than the start allowance is not made to wait for it to drain.
            seen = 2.0 * o.used * window / o.server_limit if obs.answered else 0.0
            st.tol[d] = min(window, max(obs.start_burst, seen))
        if st.lim[d] <= 0:
            # First sight: adopt the server's state. No refill is credited for the response's age: a server
            # may report its state at admission or at response time, and assuming the latter is the safe side.
            st.lim[d] = o.limit
            st.tat[d] = now + o.used * window / o.limit
            st.ft[d] = now
            continue
        if st.lim[d] != o.limit:
            # The limit changed (the server's, or first sight of it under a ceiling): adopt the server's count.
            # Ours was kept on the old scale; rescaled, 52 units in use under a limit cut from 100 to 20 would
            # wait ~100 s where the server says the next request fits in 3 s.
            st.lim[d] = o.limit
            st.tat[d] = now + o.used * window / o.limit
        interval = window / st.lim[d]
        if obs.answered and MINUTE[d] and 0 < st.tol[d] < window and st.tseq[d] <= 0:
            # Slow start: the server answered with this much of the minute in use, so it allows at least that
            # burst. (Not after a cut: answers to the burst that was refused would undo the cut, to the edge.)
            st.tol[d] = min(window, max(st.tol[d], o.used * window / o.server_limit))
        # Compared with our units in use *now*, never with the snapshot taken when the observed request was
        # granted: the server reports its state when it answers, having admitted (and refilled for) much of
        # what we granted since, so the snapshot counted our own later requests as foreign traffic, and as only
        # excesses were applied, the limiter drifted ~(requests in flight) below the server's room for good.
        # Ours also holds requests the server has not seen yet and refunds it has not credited yet, so only a
        # server showing *more* in use reveals traffic we cannot see; then we adopt its count, never believing
        # in more room than it reports. (A downward correction could credit a refund twice: never applied.)
        found = o.used - _used(st, d, now)
        if found > 0:
            st.tat[d] = now + o.used * interval
        else:
            found = 0.0
        # Foreign-rate estimate: every unit found adds 1/tau, the sum decays with time constant tau, so it
        # averages the foreign units per second over the last ~tau seconds.
        st.frate[d] = st.frate[d] * math.exp(-max(0.0, now - st.ft[d]) / FOREIGN_TAU) + found / FOREIGN_TAU
        st.ft[d] = now


def _pace(st: ScopeState, now: float) -> float:
    """The pace now (1: full), recovering linearly since the last cut."""
    if st.pace <= 0:
        return 1.0
    pace = st.pace + PACE_RECOVERY * max(0.0, now - st.pt)
    if pace >= 1.0:
        st.pace = 0.0
        return 1.0
    return pace


def slow_down_cut(wait: float) -> float:
    """The factor a ``slow_down`` whose wait is ``wait`` seconds cuts the pace by: 0.75 to 0.95.

    The wait says how far ahead of the server's ramp the traffic got. The cut is sized so that the throughput
    given up while the pace recovers, ``(1 - cut)² / (2 × PACE_RECOVERY)`` seconds of full-rate traffic, is
    about that wait: a refusal a few milliseconds before the ramp's next window (its allowance only just
    spent, by a client already at the full rate) costs ~0.1 s, one that stops the traffic for 2 s or more
    the full cut. (A flat cut to 0.75 cost such a near miss ~2 s of traffic: 0.94 of the ideal instead of
    0.98 in a 45 s job; tests/limits/test_burst.py.)
    """
    cut = 1.0 - math.sqrt(2.0 * PACE_RECOVERY * max(0.0, wait))
    return min(SLOW_DOWN_TRIM, max(SLOW_DOWN_CUT, cut))


def _cut_pace(st: ScopeState, factor: float, now: float) -> None:
    st.pace = max(PACE_MIN, _pace(st, now) * factor)
    st.pt = now
    st.pseq = st.seq


def refuse(st: ScopeState, r: Refusal, now: float) -> None:
    """After a 429 rate-limit refusal: block the scope for ``r.wait`` and learn (module docstring).

    Evidence counts only from a request admitted after the last correction (its ``seq`` is newer): the other
    requests of the same burst were admitted under the old belief and say nothing new.
    """
    st.blocked_until = max(st.blocked_until, now + r.wait)
    if r.seq < 0:
        return
    if r.slow_down:
        if r.seq > st.pseq:
            _cut_pace(st, slow_down_cut(r.wait), now)
        return
    for d in range(N_DIMS):
        lim = st.lim[d]
        if r.used[d] < 0 or r.costs[d] <= 0 or lim <= 0 or not MINUTE[d] or r.seq <= st.tseq[d]:
            continue  # no evidence here (a zero-cost poll says nothing of the token window)
        window = WINDOWS[d]
        interval = window / lim
        backlog = r.used[d] * interval  # seconds of refill in use right after the refused request was admitted
        if backlog > MINUTE_EXPLAINS * window:
            # Most of the minute was in use: the minute bucket itself explains the refusal (another client's
            # traffic, seen in the next headers), not a shorter window. Cutting the allowance below the backlog
            # would stop all sending until it drained.
            continue
        burst = st.tol[d] if 0 < st.tol[d] < window else window
        if burst <= r.costs[d] * interval or st.pace > 0:
            # Already admitting one request at a time into an empty bucket, or at a slowed pace (whose inflated
            # backlog says nothing of the window): the rate is too high, not the burst.
            if r.seq > st.pseq:
                _cut_pace(st, RATE_CUT, now)
        else:
            st.tol[d] = max(TOL_MIN, min(burst, BURST_CUT * backlog))
        st.tseq[d] = st.seq


def penalize(st: ScopeState, wait: float, now: float) -> None:
    """After a 429: admit nothing in this scope for ``wait`` seconds."""
    st.blocked_until = max(st.blocked_until, now + wait)


def view(st: ScopeState, now: float) -> dict[str, DimensionView]:
    out: dict[str, DimensionView] = {}
    for d, dim in enumerate(DIMENSIONS):
        if st.lim[d] <= 0:
            continue
        out[dim.name] = DimensionView(
            limit=st.lim[d],
            server_limit=int(st.srv[d]) if st.srv[d] > 0 else None,
            remaining=max(0.0, st.lim[d] - _used(st, d, now)),
            reset=max(0.0, st.tat[d] - now),
            window=dim.window,
        )
    return out
