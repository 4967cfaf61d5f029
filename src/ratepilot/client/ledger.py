"""The usage ledger: what a Pilot's clients did and what it cost.

Thread-safe counters, updated by the transport: requests sent (every HTTP attempt), retries, 429s, seconds
spent waiting (for the limiter and between retries), and tokens and cost per model. Cost comes from the
:class:`~ratepilot.protocol.pricing.PriceTable` the Pilot was given (batch usage at 50%), the same table the
simulator bills with. The ledger holds model names and numbers only: never a key, never a body.

Reports read well: ``repr()`` and rich's pretty printer show rounded figures (:mod:`.display`), ``str()`` is a
short summary for people, ``to_dict()`` the same rounded figures for JSON.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..protocol.pricing import PriceTable
from . import display
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": display.usd(self.cost_usd),
            "priced": self.priced,
            "unmetered": self.unmetered,
        }

    def __rich_repr__(self) -> Iterator[tuple[str, Any] | tuple[str, Any, Any]]:
        yield "requests", self.requests
        yield "prompt_tokens", self.prompt_tokens
        yield "completion_tokens", self.completion_tokens
        yield "cached_tokens", self.cached_tokens, 0
        yield "cost_usd", display.usd(self.cost_usd)
        yield "priced", self.priced, True
        yield "unmetered", self.unmetered, 0

    def __repr__(self) -> str:
        return _repr(self)

    def __str__(self) -> str:
        tokens = f"{self.prompt_tokens:,} in / {self.completion_tokens:,} out tokens"
        if self.cached_tokens:
            tokens += f" ({self.cached_tokens:,} cached)"
        cost = f"${display.usd(self.cost_usd):,.6f}" if self.priced else "cost unknown (model not in the price table)"
        unmetered = f", {self.unmetered:,} without usage" if self.unmetered else ""
        return f"{_n(self.requests, 'request')}{unmetered}, {tokens}, {cost}"


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
        """The report for JSON, figures rounded (:mod:`ratepilot.client.display`)."""
        return {
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "errors": self.errors,
            "wait_seconds": display.seconds(self.wait_seconds),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": display.usd(self.cost_usd),
            "models": {name: usage.to_dict() for name, usage in self.models.items()},
            "prices_as_of": self.prices_as_of,
        }

    def __rich_repr__(self) -> Iterator[tuple[str, Any] | tuple[str, Any, Any]]:
        yield "requests", self.requests
        yield "retries", self.retries
        yield "rate_limited", self.rate_limited
        yield "errors", self.errors
        yield "wait_seconds", display.seconds(self.wait_seconds)
        yield "prompt_tokens", self.prompt_tokens
        yield "completion_tokens", self.completion_tokens
        yield "cost_usd", display.usd(self.cost_usd)
        yield "models", self.models
        yield "prices_as_of", self.prices_as_of, ""

    def __repr__(self) -> str:
        return _repr(self)

    def __str__(self) -> str:
        attempts = _n(self.requests, "HTTP request")
        details = [
            _n(self.retries, "retry", "retries"),
            f"{self.rate_limited:,} rate-limited",
            _n(self.errors, "error"),
        ]
        lines = [
            f"{attempts} ({', '.join(details)}), {display.seconds(self.wait_seconds):,.1f}s waiting; "
            f"cost ${display.usd(self.cost_usd):,.6f}"
            + (f" (prices as of {self.prices_as_of})" if self.prices_as_of else "")
        ]
        lines += [f"  {name}: {usage}" for name, usage in sorted(self.models.items())]
        return "\n".join(lines)


def _n(count: int, one: str, many: str = "") -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def _repr(obj: Any) -> str:
    """``Name(field=value, ...)`` from ``__rich_repr__``: the same rounded figures, fields at their default left out
    (what rich's pretty printer shows too)."""
    parts = []
    for item in obj.__rich_repr__():
        name, value = item[0], item[1]
        if len(item) == 3 and value == item[2]:
            continue
        parts.append(f"{name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


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

    def cost_of(self, model: str, usage: Usage, *, batch: bool = False, tier: str | None = None) -> float:
        return self.prices.cost(model, usage.prompt, usage.completion, usage.cached, batch=batch, tier=tier)

    def record_unmetered(self, model: str) -> None:
        """A request that succeeded but reported no usage: counted, not priced."""
        with self._lock:
            models = dict(self._report.models)
            m = models.get(model, ModelUsage())
            models[model] = replace(m, requests=m.requests + 1, unmetered=m.unmetered + 1)
            self._report = replace(self._report, models=models)

    def record(self, model: str, usage: Usage, *, batch: bool = False, tier: str | None = None) -> float:
        """Add one response's usage; returns its cost in USD (``tier``: the service tier that served it)."""
        cost = self.cost_of(model, usage, batch=batch, tier=tier)
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
