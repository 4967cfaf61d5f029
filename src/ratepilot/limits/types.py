"""The limiter's vocabulary: scopes, costs, priorities, grants and the per-dimension view.

Dimensions are fixed and indexed so that every store (Python or Lua) lays them out the same way:
``rpm, tpm, rpd, tpd, ptpm`` (project tokens per minute, only where the server reports one).
"""

from __future__ import annotations

import enum
import hashlib
import itertools
from dataclasses import dataclass, field

__all__ = [
    "DIMENSIONS",
    "Cost",
    "CostTooLarge",
    "DimensionView",
    "Grant",
    "Priority",
    "Scope",
    "key_id_for",
]


@dataclass(frozen=True, slots=True)
class Dim:
    """One rate-limit dimension: what it counts and over which window."""

    name: str
    unit: str  # "requests" | "tokens"
    window: float


DIMENSIONS: tuple[Dim, ...] = (
    Dim("rpm", "requests", 60.0),
    Dim("tpm", "tokens", 60.0),
    Dim("rpd", "requests", 86_400.0),
    Dim("tpd", "tokens", 86_400.0),
    Dim("ptpm", "tokens", 60.0),
)
N_DIMS = len(DIMENSIONS)
DIM_INDEX = {d.name: i for i, d in enumerate(DIMENSIONS)}


def key_id_for(api_key: str) -> str:
    """A stable, non-reversible id for an API key (scopes and stores never see the key itself)."""
    return "k" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Scope:
    """What one set of limits applies to: an API key (by its id, never the key) and a model or model pool."""

    key_id: str
    model: str = ""
    key: str = field(init=False, repr=False, compare=False)  # the store key of this scope

    def __post_init__(self) -> None:
        if not self.key_id:
            raise ValueError("a scope needs a key_id (use key_id_for(api_key))")
        if self.key_id.startswith("sk-"):
            raise ValueError("Scope.key_id must be a hash of the API key, not the key (use key_id_for)")
        object.__setattr__(self, "key", f"{self.key_id}|{self.model}")  # computed once: used on every call


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request costs: requests (normally 1) and tokens (the server's admission cost)."""

    requests: int = 1
    tokens: int = 0

    def __post_init__(self) -> None:
        if self.requests < 0 or self.tokens < 0:
            raise ValueError(f"a cost cannot be negative: {self}")

    def per_dimension(self) -> tuple[float, ...]:
        """Units per dimension, in ``DIMENSIONS`` order (rpm, tpm, rpd, tpd, ptpm)."""
        r, t = float(self.requests), float(self.tokens)
        return (r, t, r, t, t)


class Priority(enum.IntEnum):
    """Lower value = served first. LOW (polls) never takes capacity ahead of a waiting NORMAL request."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


class CostTooLarge(ValueError):
    """A cost larger than the server's own limit (the server would answer "Request too large"): it can never
    be admitted, so the limiter raises instead of waiting, and nothing is sent."""


_grant_ids = itertools.count(1)


@dataclass(slots=True, eq=False)
class Grant:
    """A reservation the store made. Settle it with the actual usage, or cancel it, exactly once.

    ``seq`` (which admission this was) and ``used`` (the units in use right after it: how far ahead of the
    refill it went) are what its answer or its refusal teaches the learned burst: an answer widens the allowance
    to at least that much, a refusal of an admission newer than the last cut cuts it
    (:func:`ratepilot.limits.core.observe`, :func:`ratepilot.limits.core.refuse`).
    """

    scope: Scope
    cost: Cost
    seq: int
    granted_at: float  # the limiter's clock when granted
    used: tuple[float, ...]  # units in use per dimension right after this admission
    charged: tuple[bool, ...]  # dimensions that were known (and charged) at admission
    probe: bool = False  # the one request in flight while the scope's limits are still unknown
    probe_lease: float = 0.0  # the probe's lease expiry in store time (identifies it when settled)
    id: int = field(default_factory=lambda: next(_grant_ids))
    done: bool = False  # settled or cancelled


@dataclass(frozen=True, slots=True)
class DimensionView:
    """The limiter's current view of one dimension (what ``limiter.state(scope)`` returns per dimension)."""

    limit: float  # effective limit in use (server limit x (1 - margin), capped by the ceiling)
    server_limit: int | None  # as last reported by the server (None: configured ceiling only)
    remaining: float
    reset: float  # seconds until full
    window: float
