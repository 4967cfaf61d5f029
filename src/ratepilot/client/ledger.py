"""The usage ledger: what a Pilot's clients did and what it cost.

Thread-safe counters, updated by the transport: requests sent (every HTTP attempt), retries, 429s, seconds
spent waiting (for the limiter and between retries), and tokens and cost per model. Cost comes from the
:class:`~ratepilot.protocol.pricing.PriceTable` the Pilot was given (batch usage at 50%), the same table the
simulator bills with. The ledger holds model names and numbers only: never a key, never a body.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..protocol.pricing import PriceTable
from .plan import Usage

__all__ = ["ModelUsage", "UsageLedger", "UsageReport"]


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Tokens and cost for one model. ``cached_tokens`` are included in ``prompt_tokens``."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = True  # False when the price table does not know the model (its cost shows as 0)
    unmetered: int = 0  # requests whose response reported no usage (a stream without include_usage)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A snapshot of the ledger."""

    requests: int = 0  # HTTP attempts that reached the transport below ratepilot (retries included)
    retries: int = 0
    rate_limited: int = 0  # 429 rate_limit_exceeded responses received
    errors: int = 0  # other non-2xx responses and connection failures
    wait_seconds: float = 0.0  # time spent waiting for the limiter and between retries
    models: dict[str, ModelUsage] = field(default_factory=dict)
    prices_as_of: str = ""

    @property
    def cost_usd(self) -> float:
        return sum(m.cost_usd for m in self.models.values())

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.models.values())

    @property
    def completion_tokens(self) -> int:
        return sum(m.completion_tokens for m in self.models.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost_usd"] = self.cost_usd
        for name, usage in self.models.items():
            out["models"][name]["total_tokens"] = usage.total_tokens
        return out


class UsageLedger:
    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._lock = threading.Lock()
        self._report = UsageReport(prices_as_of=prices.as_of)

    def snapshot(self) -> UsageReport:
        with self._lock:
            return replace(self._report, models=dict(self._report.models))

    @property
    def cost_usd(self) -> float:
        with self._lock:
            return self._report.cost_usd

    def count(self, *, requests: int = 0, retries: int = 0, rate_limited: int = 0, errors: int = 0) -> None:
        with self._lock:
            r = self._report
            self._report = replace(
                r,
                requests=r.requests + requests,
                retries=r.retries + retries,
                rate_limited=r.rate_limited + rate_limited,
                errors=r.errors + errors,
            )

    def waited(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._report = replace(self._report, wait_seconds=self._report.wait_seconds + seconds)

    def cost_of(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        return self.prices.cost(model, usage.prompt, usage.completion, usage.cached, batch=batch)

    def record_unmetered(self, model: str) -> None:
        """A request that succeeded but reported no usage: counted, not priced."""
        with self._lock:
            models = dict(self._report.models)
            m = models.get(model, ModelUsage())
            models[model] = replace(m, requests=m.requests + 1, unmetered=m.unmetered + 1)
            self._report = replace(self._report, models=models)

    def record(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """Add one response's usage; returns its cost in USD."""
        cost = self.cost_of(model, usage, batch=batch)
        priced = self.prices.lookup(model) is not None
        with self._lock:
            models = dict(self._report.models)
            m = models.get(model, ModelUsage())
            models[model] = replace(
                m,
                requests=m.requests + 1,
                prompt_tokens=m.prompt_tokens + usage.prompt,
                completion_tokens=m.completion_tokens + usage.completion,
                cached_tokens=m.cached_tokens + usage.cached,
                cost_usd=m.cost_usd + cost,
                priced=m.priced and priced,
            )
            self._report = replace(self._report, models=models)
        return cost
