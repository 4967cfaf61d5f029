"""The state every part of the Batch driver shares, and the few helpers they all use.

:class:`~ratepilot.batch.runner.BatchRunner` holds the loop and the public API; its work is done by parts, one
concept each, that share this state: submitting (:mod:`.submission`), tracking (:mod:`.tracking`), collecting
(:mod:`.collecting`) and the retry rounds (:mod:`.retries`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client import wire
from ..errors import RatePilotError
from ..poll import _TRANSIENT as TRANSIENT_POLL_ERRORS  # the one classification of a missed poll
from .config import BatchConfig
from .state import BatchState, JobRecord, ShardRecord

if TYPE_CHECKING:
    from openai import OpenAI

    from ..clock import Clock
    from ..poll import PollSchedule
    from ..protocol.pricing import PriceTable
    from ..webhooks import Subscription, WebhookReceiver
    from .online import OnlineFallback

__all__ = [
    "MAX_CREATE_FAULTS",
    "WEBHOOK_BACKSTOP_SECONDS",
    "JobConflictError",
    "JobNotFoundError",
    "RunnerBase",
    "cut_off",
    "job_config",
]

WEBHOOK_BACKSTOP_SECONDS = 1800.0
"""With webhooks, a batch is still retrieved at least this often, in case its event was lost."""
MAX_CREATE_FAULTS = 8
"""Faults in a row on one shard's upload or create (each followed by a reconcile) before the error is raised."""


class JobNotFoundError(RatePilotError, LookupError):
    """No job of that name in this state directory."""


class JobConflictError(RatePilotError, ValueError):
    """A job of that name exists but was planned from different input."""


class RunnerBase:
    """What the parts of :class:`~ratepilot.batch.runner.BatchRunner` share (it sets every attribute)."""

    client: OpenAI
    config: BatchConfig
    clock: Clock
    prices: PriceTable
    fallback: OnlineFallback | None
    store: BatchState
    state_dir: Path
    key_id: str
    receiver: WebhookReceiver | None
    _next_poll: dict[tuple[int, int], float]
    _schedules: dict[tuple[int, int], PollSchedule]
    _subs: dict[tuple[int, int], Subscription]
    _once_client: OpenAI | None
    _create_faults: dict[tuple[int, int], int]

    def _job_dir(self, job: JobRecord) -> Path:
        return self.state_dir / "batches" / job.name

    def _token_limit(self, model: str) -> int | None:
        if model in self.config.token_limits:
            return self.config.token_limits[model]
        return self.store.token_limit(model, self.key_id)

    # Tracking's, used by submission (a batch just created is scheduled and applied like a polled one).
    def _schedule_next(
        self, job: JobRecord, shard: ShardRecord, batch: Any, *, first: bool = False, woken: bool = False
    ) -> None:
        raise NotImplementedError

    def _apply_batch(self, job: JobRecord, shard: ShardRecord, batch: Any) -> None:
        raise NotImplementedError

    def _shard_config(self, job: JobRecord) -> BatchConfig:
        raise NotImplementedError


def cut_off(exc: BaseException) -> bool:
    """A transient failure of a download: the SDK's, or the HTTP library's (httpx2 or httpx) for a body cut off."""
    if isinstance(exc, TRANSIENT_POLL_ERRORS):
        return True
    libs = [sys.modules[name] for name in ("httpx2", "httpx") if name in sys.modules]
    return any(wire.failure_kind(lib, exc) is not None for lib in libs)


def job_config(job: JobRecord) -> dict[str, Any]:
    """The settings recorded on the job (its planner's :class:`BatchConfig`, plus later choices)."""
    try:
        data = json.loads(job.config or "{}")
    except ValueError:  # a damaged record: fall back to this runner's settings
        return {}
    return data if isinstance(data, dict) else {}
