"""Knobs for the simulator's long-running objects (files, batches, background responses, runs, webhooks).

Every duration here is in *API seconds*: the time the real service would take. ``time_scale`` says how many
API seconds pass per second of the simulator's clock, so ``time_scale=86_400`` makes a batch's 24 h window
last one clock second, while an injected ``FakeClock`` can simply be advanced by 86,400.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError

__all__ = ["DEFAULT_ENQUEUED_TOKEN_LIMIT", "LongrunConfig"]

DEFAULT_ENQUEUED_TOKEN_LIMIT = 2_000_000
"""The figure in the real ``token_limit_exceeded`` message (tier-1 ``gpt-4o-mini``); configurable per model."""


@dataclass(frozen=True)
class LongrunConfig:
    """Behaviour of the long-running endpoints. Read from ``SimConfig.longrun`` (an instance of this class, or
    a mapping of its fields such as the TOML ``[longrun]`` table), or attached later with
    :func:`ratepilot.sim.longrun.configure`."""

    # time
    time_scale: float = 1.0
    seed: int = 0

    # Batch API
    batch_validation_seconds: float = 2.0
    batch_lines_per_second: float = 10.0
    batch_finalizing_seconds: float = 2.0
    batch_cancelling_seconds: float = 1.0
    batch_completion_window_seconds: float = 86_400.0
    batch_line_failure_rate: float = 0.0
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    batch_max_embedding_inputs: int = 50_000
    enqueued_token_limit: int | None = DEFAULT_ENQUEUED_TOKEN_LIMIT
    enqueued_token_limits: Mapping[str, int] = field(default_factory=dict)
    batch_list_default_limit: int = 20

    # Files API
    file_max_bytes: int = 512 * 1024 * 1024
    batch_file_expiry_seconds: float = 30 * 86_400.0

    # Responses API, background mode
    response_queued_seconds: float = 1.0
    response_in_progress_seconds: float = 2.0
    response_failure_rate: float = 0.0
    response_incomplete_rate: float = 0.0

    # Assistants runs
    run_queued_seconds: float = 1.0
    run_in_progress_seconds: float = 2.0
    run_failure_rate: float = 0.0
    run_expiry_seconds: float = 600.0
    poll_after_ms: int | None = None

    # Webhooks (Standard Webhooks); nothing is sent unless both are set
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 5.0
    webhook_backoff_max_seconds: float = 3_600.0
    webhook_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError("longrun.time_scale must be > 0")
        if not self.batch_lines_per_second > 0:
            raise ValueError("longrun.batch_lines_per_second must be > 0")
        for name in (
            "batch_line_failure_rate",
            "response_failure_rate",
            "response_incomplete_rate",
            "run_failure_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"longrun.{name} must be within [0, 1], got {value}")
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError("longrun.webhook_secret must start with 'whsec_' (Standard Webhooks secret)")

    def clock_seconds(self, api_seconds: float) -> float:
        """How long ``api_seconds`` of service time lasts on the simulator's clock."""
        return api_seconds / self.time_scale

    def token_limit_for(self, model: str) -> int | None:
        """Enqueued-prompt-token limit across this organization's pending batches for ``model``."""
        if model in self.enqueued_token_limits:
            return self.enqueued_token_limits[model]
        return self.enqueued_token_limit

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self.webhook_url and self.webhook_secret)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LongrunConfig:
        """Build from a TOML ``[longrun]`` table / dict; a typo or a wrongly typed value is a
        :class:`~ratepilot.sim.config.ConfigError` naming the setting (it must not pass silently)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"longrun: unknown setting(s) {', '.join(unknown)}")
        defaults = cls()
        for name, value in data.items():
            default = getattr(defaults, name)
            if isinstance(default, Mapping):
                ok = isinstance(value, Mapping) and all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()
                )
            elif isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int | float) or default is None:
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                ok = value is None or numeric or (default is None and isinstance(value, str))
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise ConfigError(f"longrun.{name} has the wrong type ({type(value).__name__})")
        try:
            return cls(**dict(data))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
