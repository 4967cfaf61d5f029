"""What every actor of a Ray job needs to share one organization's limits, and the job's stop flag in Redis.

:class:`PilotSettings` is built once on the driver and shipped to each actor (its ``job`` id, drawn on the
driver, is what makes the actors one job). :class:`RunControl` is the job's stop flag: the first actor that
meets a stop (``insufficient_quota``, the budget, a rejected key) sets it, and every actor on every node stops
sending within a fraction of a second, instead of each finding out the hard way with one request per row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailable
from ..limits.stores import redis_url_and_prefix

__all__ = ["STOP_REASONS", "PilotSettings", "RunControl"]

STOP_REASONS = ("quota", "budget", "auth", "store")
"""Why a job stops: ``insufficient_quota`` or a billing code; the shared budget; a rejected key (401/403); the
shared store not answering. ``budget`` stops issuing (requests already admitted finish); the others also cancel
what is waiting, since nothing sent after them can succeed."""

STOP_TTL_S = 86_400  # a stop flag outlives any run that could read it, then goes


@dataclass(frozen=True)
class PilotSettings:
    """How each actor builds its :class:`~ratepilot.Pilot`.

    * ``store``: the limiter store every actor shares, ``redis://host:port/db[?prefix=...]`` (or ``rediss://``,
      ``unix://``): actors run on any node, so it must be Redis. The stop flag and the budget ledger live there too;
    * ``base_url``: default ``$OPENAI_BASE_URL`` on the actor's node, else ``https://api.openai.com/v1``;
    * ``api_key``: default ``$OPENAI_API_KEY`` on the actor's node. Never shown in a repr or a log line; it travels
      to the actors inside their constructor arguments (Ray's object store), not in a runtime env, which Ray's
      dashboard would display;
    * ``budget_usd``: one cap for the whole job, kept in Redis (:class:`~ratepilot.client.shared_budget.SharedBudget`);
      ``budget_spent_usd``: what earlier runs of the job already spent (used if the job's ledger is new);
    * ``job``: the id that ties the actors together (stop flag, budget ledger); a new one per settings object;
    * ``max_in_flight``: requests each actor keeps waiting on the limiter or on the wire at once (the limiter,
      not this number, decides the rate: it only has to cover the actor's share of rate × latency);
    * ``request_timeout_s``, ``patience_s``: as ``ratepilot run``'s ``--request-timeout`` and ``--patience``;
    * ``limiter_options``: extra :class:`~ratepilot.limits.Limiter` keyword arguments (``ceiling=``, ...).
    """

    store: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    budget_usd: float | None = None
    budget_spent_usd: float = 0.0
    job: str = field(default_factory=lambda: uuid.uuid4().hex)
    max_in_flight: int = 32
    request_timeout_s: float = 600.0
    patience_s: float | None = None
    limiter_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        redis_url_and_prefix(self.store)  # raises ValueError for anything but a Redis URL
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError(f"budget_usd must be >= 0, got {self.budget_usd}")

    @property
    def redis_url(self) -> str:
        return redis_url_and_prefix(self.store)[0]

    @property
    def prefix(self) -> str:
        return redis_url_and_prefix(self.store)[1]


class RunControl:
    """The job's stop flag, ``<prefix>ray:<job>:stop`` (JSON ``{"reason", "message"}``; the first stop wins)."""

    def __init__(self, settings: PilotSettings) -> None:
        self.key = f"{settings.prefix}ray:{settings.job}:stop"
        self._client: Any = redis.Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)

    def stop(self, reason: str, message: str) -> None:
        payload = orjson.dumps({"reason": reason, "message": message})
        self._call(lambda: self._client.set(self.key, payload, nx=True, ex=STOP_TTL_S))

    def stopped(self) -> tuple[str, str] | None:
        """(reason, message) once any process of the job has stopped it, else None."""
        raw = self._call(lambda: self._client.get(self.key))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return str(data.get("reason") or "stopped"), str(data.get("message") or "")

    def clear(self) -> None:
        self._call(lambda: self._client.delete(self.key))

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(f"the job's stop flag in Redis cannot be used: {exc}") from exc
