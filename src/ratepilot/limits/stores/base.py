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


# The text encoding (and the Lua scripts' MessagePack sequence, in the same order), one number per field:
#
#   seq probe_until blocked_until nohdr | lim srv tat (retired) (retired) frate ft tol tseq, N each | pace pt pseq
#
# The two retired blocks held ``adj`` and ``oseq``, bookkeeping that nothing read. They are still written, as
# zeros, and ignored when read: a state written by an older version (which filled them) loads, and an older
# version sharing the store during an upgrade still finds every other field where it reads it by position
# (dropping the blocks would make it read tol as frate, silently, in Redis). Reading tolerates other lengths: a
# state from before the learned burst has no tol..pseq (39 numbers) and reads them as 0 (never learned), and
# numbers past the known ones (a later version's additions) are ignored, as the Lua scripts ignore them.
_RETIRED = 2 * N_DIMS
_OLD_FIELDS = 4 + 7 * N_DIMS
_FIELDS = 4 + 9 * N_DIMS + 3


def encode_state(st: ScopeState) -> str:
    """Space-separated numbers in the order above."""
    nums: list[float | int] = [st.seq, st.probe_until, st.blocked_until, st.nohdr]
    nums += [*st.lim, *st.srv, *st.tat, *([0] * _RETIRED), *st.frate, *st.ft, *st.tol, *st.tseq]
    nums += [st.pace, st.pt, st.pseq]
    return " ".join(repr(float(x)) if isinstance(x, float) else str(x) for x in nums)


def decode_state(text: str) -> ScopeState:
    v = text.split()
    if len(v) != _OLD_FIELDS and len(v) < _FIELDS:
        raise ValueError(f"corrupt limiter state ({len(v)} fields)")
    n = N_DIMS
    f = [float(x) for x in v[:_FIELDS]] + [0.0] * (_FIELDS - len(v))
    kept = 4 + 3 * n + _RETIRED  # where frate starts, past the retired blocks
    return ScopeState(
        seq=int(f[0]),
        probe_until=f[1],
        blocked_until=f[2],
        nohdr=int(f[3]),
        lim=f[4 : 4 + n],
        srv=f[4 + n : 4 + 2 * n],
        tat=f[4 + 2 * n : 4 + 3 * n],
        frate=f[kept : kept + n],
        ft=f[kept + n : kept + 2 * n],
        tol=f[kept + 2 * n : kept + 3 * n],
        tseq=f[kept + 3 * n : kept + 4 * n],
        pace=f[kept + 4 * n],
        pt=f[kept + 4 * n + 1],
        pseq=f[kept + 4 * n + 2],
    )
