"""What a job's status says: its counts, cost, and when its running batches will end (the ETA)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .state import ShardRecord, ShardState

__all__ = ["JobStatus", "eta", "last_polled"]


@dataclass(frozen=True)
class JobStatus:
    """A job as recorded: line counts, shards, money spent so far and an ETA for the running batches."""

    name: str
    state: str
    url: str
    total: int
    done: int
    failed: int
    retry: int
    pending: int
    cost_usd: float
    eta_seconds: float | None
    shards: tuple[ShardRecord, ...] = field(repr=False)
    failure_codes: Mapping[str, int] = field(default_factory=dict)
    polled_at: float | None = None
    """Wall time (the runner's clock) of the last look at the running batches; ``None`` if none runs."""
    now: float = 0.0
    """Wall time (the runner's clock) this status was taken at."""

    @property
    def complete(self) -> bool:
        """Every line has its final answer (success or a failure that will not be retried)."""
        return self.pending == 0 and self.retry == 0 and self.total > 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = self.complete
        data["shards"] = [{k: v for k, v in asdict(s).items() if k not in ("job", "path")} for s in self.shards]
        return data


def eta(shards: tuple[ShardRecord, ...], now: float) -> float | None:
    """Seconds from ``now`` (the runner's wall clock, the time base of the shards' ``updated_at``) until the
    job's current batches finish, or ``None`` when that is unknown.

    Each running batch's rate is its progress between the server's ``in_progress_at`` and the last poll
    (``updated_at``); what the batch still needs at that rate, less the time since that poll. Unknown — rather
    than a wrong number — while any shard of the job waits to be created (deferred for enqueued-token capacity,
    not uploaded yet) or runs without measurable progress yet (validating, nothing finished).
    """
    worst = 0.0
    running = False
    for s in shards:
        if s.state in (ShardState.FINISHED, ShardState.COLLECTED):
            continue
        if s.state != ShardState.SUBMITTED:
            return None  # planned, uploaded (deferred), or an intent: its batch has not started
        finished = s.completed + s.failed
        elapsed = s.updated_at - (s.in_progress_at or 0.0)
        if not s.in_progress_at or not s.total or finished <= 0 or elapsed <= 0:
            return None
        running = True
        left = (s.total - finished) * elapsed / finished - (now - s.updated_at)
        worst = max(worst, left)
    return worst if running else None


def last_polled(shards: tuple[ShardRecord, ...]) -> float | None:
    """When the job's running batches were last looked at (the runner's wall clock), if any is running."""
    times = [s.updated_at for s in shards if s.state == ShardState.SUBMITTED]
    return max(times) if times else None
