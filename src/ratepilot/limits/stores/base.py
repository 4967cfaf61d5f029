"""The store protocol and the one text encoding of a scope's state (shared with the Lua scripts)."""

from __future__ import annotations

from typing import Protocol

from ..core import Observation, Refusal, Reserved, ReserveParams, ScopeState, Wait
from ..types import N_DIMS

__all__ = ["Store", "decode_state", "encode_state"]


class Store(Protocol):
    """Atomic operations on one scope's state, addressed by ``Scope.key``."""

    uri: str
    shared: bool  # other processes may change the state (drivers re-check instead of trusting wake-ups)

    def reserve(self, key: str, costs: tuple[float, ...], params: ReserveParams) -> Reserved | Wait: ...

    def adjust(
        self, key: str, deltas: tuple[float, ...], charged: tuple[bool, ...], probe_hold: float, probe_lease: float
    ) -> None:
        """Charge/refund the dimensions a grant charged; ``probe_hold >= 0`` cuts the probe lease to at most that
        many seconds from now (negative: leave it), if the lease is still ``probe_lease`` (the grant's own)."""
        ...

    def observe(self, key: str, obs: Observation) -> None: ...

    def penalize(self, key: str, wait: float) -> None: ...

    def refuse(self, key: str, refusal: Refusal) -> None:
        """A 429 rate-limit refusal: block and learn (:func:`ratepilot.limits.core.refuse`)."""
        ...

    def load(self, key: str) -> tuple[ScopeState | None, float]:
        """The scope's state (None if never seen) and the store's current time."""
        ...

    def close(self) -> None: ...


_OLD_FIELDS = 4 + 7 * N_DIMS  # before the learned burst (tol, tseq, pace, pt, pseq): read as never learned
_FIELDS = 4 + 9 * N_DIMS + 3


def encode_state(st: ScopeState) -> str:
    """Space-separated numbers: seq probe_until blocked_until nohdr, then lim, srv, tat, adj, oseq, frate, ft,
    tol, tseq for every dimension, then pace pt pseq."""
    nums: list[float | int] = [st.seq, st.probe_until, st.blocked_until, st.nohdr]
    nums += [*st.lim, *st.srv, *st.tat, *st.adj, *st.oseq, *st.frate, *st.ft, *st.tol, *st.tseq]
    nums += [st.pace, st.pt, st.pseq]
    return " ".join(repr(float(x)) if isinstance(x, float) else str(x) for x in nums)


def decode_state(text: str) -> ScopeState:
    v = text.split()
    if len(v) not in (_OLD_FIELDS, _FIELDS):
        raise ValueError(f"corrupt limiter state ({len(v)} fields)")
    n = N_DIMS
    f = [float(x) for x in v] + [0.0] * (_FIELDS - len(v))
    return ScopeState(
        seq=int(f[0]),
        probe_until=f[1],
        blocked_until=f[2],
        nohdr=int(f[3]),
        lim=f[4 : 4 + n],
        srv=f[4 + n : 4 + 2 * n],
        tat=f[4 + 2 * n : 4 + 3 * n],
        adj=f[4 + 3 * n : 4 + 4 * n],
        oseq=[int(x) for x in f[4 + 4 * n : 4 + 5 * n]],
        frate=f[4 + 5 * n : 4 + 6 * n],
        ft=f[4 + 6 * n : 4 + 7 * n],
        tol=f[4 + 7 * n : 4 + 8 * n],
        tseq=f[4 + 8 * n : 4 + 9 * n],
        pace=f[4 + 9 * n],
        pt=f[4 + 9 * n + 1],
        pseq=f[4 + 9 * n + 2],
    )
