"""The sans-IO core of the limiter: one scope's state and the pure operations on it.

No clock, no lock, no I/O: every function takes ``now`` (the store's time) and mutates a :class:`ScopeState`.
The memory and SQLite stores load a state, apply one of these functions and save it in one transaction;
the Redis store runs the same arithmetic in Lua (``limits/lua/*.lua``, kept line-for-line parallel to this
module; the shared test body in ``tests/limits`` runs every behaviour against all three).

Each known dimension is a GCRA bucket (see :mod:`ratepilot.limits.gcra`): ``tat`` is the instant the
bucket would be full again and ``lim`` the effective limit, so the units in use are ``(tat - now) / (window
/ lim)``. A reservation is admitted in every known dimension at once, or in none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .types import DIM_INDEX, DIMENSIONS, N_DIMS, DimensionView

__all__ = [
    "DimObservation",
    "Observation",
    "ReserveParams",
    "Reserved",
    "ScopeState",
    "Wait",
    "adjust",
    "observe",
    "penalize",
    "reserve",
    "view",
]

EPS = 1e-9
FOREIGN_TAU = 2.0  # seconds: time constant of the foreign-traffic rate estimate
WINDOWS = tuple(d.window for d in DIMENSIONS)
NO_CEILING = (0.0,) * N_DIMS
_RPM, _TPM = DIM_INDEX["rpm"], DIM_INDEX["tpm"]


def _zeros() -> list[float]:
    return [0.0] * N_DIMS


@dataclass(slots=True)
class ScopeState:
    """Everything the store keeps for one scope (the Redis hash has the same fields)."""

    seq: int = 0  # reservations made so far
    probe_until: float = 0.0  # while limits are unknown: the probe request's lease
    blocked_until: float = 0.0  # after a 429: nothing is admitted before this
    nohdr: int = 0  # responses without headers while limits are unknown
    lim: list[float] = field(default_factory=_zeros)  # effective limit per dimension (0 = unknown)
    srv: list[float] = field(default_factory=_zeros)  # the server's limit as last reported (0 = never)
    tat: list[float] = field(default_factory=_zeros)
    adj: list[float] = field(default_factory=_zeros)  # cumulative corrections applied from observations
    oseq: list[int] = field(default_factory=lambda: [0] * N_DIMS)  # seq of the last grant observed
    frate: list[float] = field(default_factory=_zeros)  # estimated foreign traffic, units per second
    ft: list[float] = field(default_factory=_zeros)  # when frate was last updated

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


@dataclass(slots=True)  # not frozen: constructed on every reservation, and frozen init is slow
class Reserved:
    seq: int
    used: tuple[float, ...]
    adj: tuple[float, ...]
    charged: tuple[bool, ...]
    probe: bool
    lease: float = 0.0  # a probe's lease expiry (store time): identifies the probe when it is settled


@dataclass(slots=True)  # not frozen: constructed on every reservation, and frozen init is slow
class Wait:
    """Not admitted: try again in ``seconds`` (``probe`` = waiting for the probe's response, not for time)."""

    seconds: float
    probe: bool = False


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
    age: float  # seconds since the observed request was sent (informational: see observe())
    ref_seq: int = -1  # the observed request's grant (-1: unknown)
    # The grant's accounting snapshot, and the share of a downward correction to apply: no longer used by
    # observe() (comparing with the snapshot double-counted our own requests), kept for the stores' wire format.
    ref_used: tuple[float, ...] = (0.0,) * N_DIMS
    ref_adj: tuple[float, ...] = (0.0,) * N_DIMS
    damping: float = 0.0


def _used(st: ScopeState, d: int, now: float) -> float:
    return max(0.0, st.tat[d] - now) * st.lim[d] / WINDOWS[d]


def reserve(st: ScopeState, costs: tuple[float, ...], now: float, p: ReserveParams) -> Reserved | Wait:
    """Admit ``costs`` (units per dimension) in every known dimension, or say how long to wait."""
    if p.ceiling != NO_CEILING:
        for d in range(N_DIMS):
            if st.lim[d] <= 0 and p.ceiling[d] > 0:
                st.lim[d] = p.ceiling[d]
                st.tat[d] = now
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
            return Reserved(st.seq, (0.0,) * N_DIMS, tuple(st.adj), (False,) * N_DIMS, True, st.probe_until)
        if not st.known:  # the server never reports limits and none is configured: rely on 429 penalties
            st.seq += 1
            return Reserved(st.seq, (0.0,) * N_DIMS, tuple(st.adj), (False,) * N_DIMS, False)
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
        # Room kept for traffic we cannot see yet: what others used lately, over the feedback delay.
        foreign = min(st.frate[d] * p.foreign_horizon, 0.5 * lim)
        tolerance = window * keep - foreign * interval
        tat = st.tat[d]
        base = tat if tat > now else now
        add = costs[d] * interval
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
    return Reserved(st.seq, tuple(used), tuple(st.adj), tuple(charged), False)


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


def observe(st: ScopeState, obs: Observation, now: float) -> None:
    """Correct the scope's state from what the server said (see :mod:`ratepilot.limits.learning`)."""
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
        if st.lim[d] <= 0:
            # First sight: adopt the server's state. No refill is credited for the response's age: a server
            # may report its state at admission or at response time, and assuming the latter is the safe side.
            st.lim[d] = o.limit
            st.tat[d] = now + o.used * window / o.limit
            st.oseq[d] = st.seq  # grants made before this carry no accounting for this dimension
            st.ft[d] = now
            continue
        if st.lim[d] != o.limit:
            # The limit changed (the server's, or first sight of it under a ceiling): adopt the server's count.
            # Ours was kept on the old scale; rescaled, 52 units in use under a limit cut from 100 to 20 would
            # wait ~100 s where the server says the next request fits in 3 s.
            st.lim[d] = o.limit
            st.tat[d] = now + o.used * window / o.limit
        interval = window / st.lim[d]
        if obs.ref_seq > st.oseq[d]:
            st.oseq[d] = obs.ref_seq  # the newest grant observed (bookkeeping only)
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
            st.adj[d] += found
        else:
            found = 0.0
        # Foreign-rate estimate: every unit found adds 1/tau, the sum decays with time constant tau, so it
        # averages the foreign units per second over the last ~tau seconds.
        st.frate[d] = st.frate[d] * math.exp(-max(0.0, now - st.ft[d]) / FOREIGN_TAU) + found / FOREIGN_TAU
        st.ft[d] = now


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
