"""Prices per million tokens, dated and overridable.

Used by the client's usage ledger and budget, and by the simulator's credit accounting, so the cost the
ledger reports is the cost the simulator bills. Batch requests cost 50% of the synchronous price; so does the
``flex`` service tier; ``priority`` (renamed ``fast``) costs more (:data:`TIER_FACTORS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "BATCH_DISCOUNT",
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "TIER_FACTORS",
    "ModelPrice",
    "PriceTable",
    "answered_tier",
    "served_tier",
]

PRICES_AS_OF = "2026-11-01"
BATCH_DISCOUNT = 0.5
TIER_FACTORS: Mapping[str, float] = {"default": 1.0, "scale": 1.0, "flex": BATCH_DISCOUNT, "priority": 2.0}
"""Price of a request served by a tier, as a factor of the standard price. Flex is billed at Batch prices;
priority's premium differs per model (about 1.7-2x on the published page): 2x is the cautious round figure."""


def served_tier(tier: object) -> str:
    """The tier a ``service_tier`` value names, as responses report it: ``auto`` (or nothing) -> ``default``,
    ``fast`` (priority's 2026 name) -> ``priority``."""
    if tier in (None, "", "auto", "default"):
        return "default"
    if tier == "fast":
        return "priority"
    return str(tier)


def answered_tier(body: object) -> str | None:
    """The tier an answer's body says served it (``None``: it names none), as :func:`served_tier` spells it."""
    tier = body.get("service_tier") if isinstance(body, Mapping) else None
    return served_tier(tier) if isinstance(tier, str) else None


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, *, batch: bool = False) -> float:
        cached = min(cached_tokens, prompt_tokens)
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        usd = ((prompt_tokens - cached) * self.input + cached * cached_rate + completion_tokens * self.output) / 1e6
        return usd * BATCH_DISCOUNT if batch else usd


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60, 0.075),
    "gpt-4o": ModelPrice(2.50, 10.00, 1.25),
    "gpt-4.1": ModelPrice(2.00, 8.00, 0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, 0.10),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, 0.025),
    "gpt-5": ModelPrice(1.25, 10.00, 0.125),
    "gpt-5-mini": ModelPrice(0.25, 2.00, 0.025),
    "gpt-5-nano": ModelPrice(0.05, 0.40, 0.005),
    "o4-mini": ModelPrice(1.10, 4.40, 0.275),
    "gpt-3.5-turbo": ModelPrice(0.50, 1.50),
    "gpt-3.5-turbo-instruct": ModelPrice(1.50, 2.00),
    "text-embedding-3-small": ModelPrice(0.02, 0.0),
    "text-embedding-3-large": ModelPrice(0.13, 0.0),
    "text-embedding-ada-002": ModelPrice(0.10, 0.0),
    "omni-moderation-latest": ModelPrice(0.0, 0.0),
}


@dataclass(frozen=True)
class PriceTable:
    """Model -> price, with overrides. A dated snapshot (``as_of``) because prices change."""

    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    as_of: str = PRICES_AS_OF

    def with_overrides(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        return PriceTable({**self.prices, **overrides}, self.as_of)

    def lookup(self, model: str) -> ModelPrice | None:
        """Exact name first, then the longest known prefix (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
        if model in self.prices:
            return self.prices[model]
        best = max((k for k in self.prices if model.startswith(k)), key=len, default=None)
        return self.prices[best] if best else None

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        *,
        batch: bool = False,
        tier: str | None = None,
    ) -> float:
        """USD; 0.0 for a model with no known price (the ledger reports such models separately). ``tier``: the
        service tier that served the request (as the response says; ``None``: standard)."""
        price = self.lookup(model)
        if price is None:
            return 0.0
        usd = price.cost(prompt_tokens, completion_tokens, cached_tokens, batch=batch)
        return usd if batch or tier is None else usd * TIER_FACTORS.get(served_tier(tier), 1.0)
