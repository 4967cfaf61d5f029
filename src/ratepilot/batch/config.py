"""Settings of a Batch job: the API's per-file limits, enqueued-token limits, retries, polling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..poll import PollPolicy

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_EMBEDDING_INPUTS",
    "DEFAULT_MAX_REQUESTS",
    "BatchConfig",
]

DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_EMBEDDING_INPUTS = 50_000


@dataclass(frozen=True)
class BatchConfig:
    """How a job is split, submitted, tracked and retried. Every limit is configurable so tests use small ones.

    ``token_limits`` are per-model enqueued-prompt-token limits (across all pending batches of the
    organization). Unknown limits are learned from the first ``token_limit_exceeded`` failure and remembered in
    the state database; a configured value wins over a learned one.
    """

    max_requests: int = DEFAULT_MAX_REQUESTS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS
    token_limits: Mapping[str, int] = field(default_factory=dict)
    max_attempts: int = 3
    """Submissions per line: the first one plus retries of retryable failures (5xx, expired, cancelled)."""
    completion_window: str = "24h"
    poll_interval: float | None = None
    """Fixed seconds between status polls of each running batch; ``None`` (default): the budgeted adaptive
    schedule of :mod:`ratepilot.poll` (rare polls while validating, then landing near the predicted end)."""
    poll_policy: PollPolicy | None = None
    """Tuning of the adaptive schedule (``None``: :class:`ratepilot.poll.PollPolicy` defaults)."""
    token_estimate: Literal["fast", "exact"] = "fast"
    """Enqueued-token estimate per request: ``fast`` = line bytes / 4 (a conservative bound for Latin text,
    no tokenizer cost), ``exact`` = the real tokenizer (``protocol.tokens.estimate_prompt_tokens``)."""
    parse_workers: int | None = None
    """Processes validating lines in parallel while planning: ``None`` = one per usable CPU, at most 4, for
    files of 256 MB and more, inline below; ``1`` = always inline; ``n`` = always ``n`` workers."""
    max_deferrals: int = 50
    """How often a shard may fail with ``token_limit_exceeded`` before its lines are reported as failed."""
    keep_files: bool = False
    """Keep the uploaded input files on the server once the job is done (default: delete them then; they
    count against the organization's file storage and are never needed again)."""
    output_expires_after: int | None = 30 * 86_400
    """Seconds after a batch's creation its output and error files are deleted by the server (sent as
    ``output_expires_after``; 3,600 to 2,592,000). The default, the longest allowed, makes the deadline for
    collecting explicit (``wait`` collects each batch as soon as it ends). ``None``: not sent (the server
    deletes them 30 days after the batch ends)."""
    max_creations_per_hour: int = 2_000
    """Batch creations per rolling hour, counted over every job of the state directory (the API's limit)."""

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_bytes", "max_embedding_inputs", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.poll_interval is not None and self.poll_interval < 0:
            raise ValueError("poll_interval must be >= 0")
        if self.output_expires_after is not None and not 3_600 <= self.output_expires_after <= 2_592_000:
            raise ValueError("output_expires_after must be between 3600 (1 hour) and 2592000 (30 days) seconds")
        if self.max_creations_per_hour < 1:
            raise ValueError("max_creations_per_hour must be >= 1")
