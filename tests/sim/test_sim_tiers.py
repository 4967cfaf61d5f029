"""Service tiers in the simulator: the response names the tier that served it, each tier is billed at its price,
and flex lacks capacity — 429 "Resource Unavailable", unbilled, tokens returned — at random or in busy periods."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.protocol.errors import ErrorClass, classify
from ratepilot.protocol.pricing import PriceTable
from ratepilot.sim import ConfigError, SimConfig, Simulator

from .conftest import user

MODEL = "gpt-4o-mini"


def _cost(sim: Simulator) -> float:
    return sum(u["cost_usd"] for u in sim.stats()["usage"].values())


@pytest.mark.parametrize(
    ("asked", "served", "factor"),
    [
        (None, "default", 1.0),
        ("auto", "default", 1.0),
        ("flex", "flex", 0.5),
        ("priority", "priority", 2.0),
        ("fast", "priority", 2.0),
    ],
)
def test_each_tier_is_reported_and_billed_at_its_price(
    make_sim: Callable[..., Simulator],
    sync_client: Callable[..., OpenAI],
    asked: str | None,
    served: str,
    factor: float,
) -> None:
    sim = make_sim()
    extra = {} if asked is None else {"service_tier": asked}
    reply = sync_client(sim).chat.completions.create(model=MODEL, messages=user("hello"), max_tokens=5, **extra)
    assert reply.service_tier == served
    assert reply.usage is not None
    standard = PriceTable().cost(MODEL, reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert _cost(sim) == pytest.approx(standard * factor)
    assert sim.stats()["tiers"] == {served: 1}


def test_flex_without_capacity_is_a_429_that_is_not_a_rate_limit_and_costs_nothing(
    make_sim: Callable[..., Simulator], sync_client: Callable[..., OpenAI]
) -> None:
    sim = make_sim(flex_unavailable_p=1.0, tpm=1_000)
    client = sync_client(sim)
    for _ in range(5):  # far more tokens than the TPM if they were kept: the refusals return them
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=user("hello " * 50), service_tier="flex")
        body = caught.value.body
        assert classify(429, {"error": body}).error_class is ErrorClass.UNAVAILABLE
        assert caught.value.code == "resource_unavailable" and "You will not be charged" in caught.value.message
    assert _cost(sim) == 0.0
    assert sim.stats()["tiers"] == {"flex_unavailable": 5}
    assert sim.stats()["rate_limited"]["total"] == 0  # not a rate-limit refusal
    # The standard tier is unaffected.
    assert (
        client.chat.completions.create(model=MODEL, messages=user("hi"), service_tier="auto").service_tier == "default"
    )


def test_flex_busy_periods_follow_the_simulator_clock(
    make_sim: Callable[..., Simulator], sync_client: Callable[..., OpenAI]
) -> None:
    clock = FakeClock(autojump=False)
    sim = make_sim(flex_busy=((10.0, 20.0),), flex_error_code="flex_capacity", clock=clock)
    client = sync_client(sim)

    def flex() -> str:
        try:
            return str(
                client.chat.completions.create(model=MODEL, messages=user("hi"), service_tier="flex").service_tier
            )
        except openai.RateLimitError as exc:
            return str(exc.code)

    assert flex() == "flex"
    clock.advance(12.0)
    assert flex() == "flex_capacity"  # the code is configurable (the real one is unconfirmed)
    clock.advance(10.0)
    assert flex() == "flex"


def test_an_unknown_tier_is_a_400(make_sim: Callable[..., Simulator], sync_client: Callable[..., OpenAI]) -> None:
    with pytest.raises(openai.BadRequestError, match="Supported values"):
        sync_client(make_sim()).chat.completions.create(
            model=MODEL,
            messages=user("hi"),
            service_tier="cheapest",  # type: ignore[arg-type]
        )


def test_tier_settings_are_validated_and_read_from_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flex_unavailable_p"):
        SimConfig(flex_unavailable_p=1.5)
    path = tmp_path / "sim.toml"
    path.write_text("flex_unavailable_p = 0.25\nflex_busy = [[60, 120]]\nflex_latency_ms = 5000\n")
    cfg = SimConfig.from_toml(path)
    assert (cfg.flex_unavailable_p, cfg.flex_busy, cfg.flex_latency_ms) == (0.25, ((60.0, 120.0),), 5000.0)
