"""The ledger and the budget: cost equals what the simulator billed; the budget stops before it is crossed."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from openai import AsyncOpenAI, OpenAI

from ratepilot.client import BudgetAlert, Pilot
from ratepilot.clock import FakeClock
from ratepilot.errors import BudgetExceeded
from ratepilot.protocol.pricing import ModelPrice, PriceTable
from ratepilot.sim import Simulator

from .helpers import billed_usd, total_requests

MSG = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def test_budget_stops_before_exceeding_and_ledger_equals_billed(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    budget = 0.0002
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    alerts: list[BudgetAlert] = []
    pilot = Pilot(clock=clock, budget_usd=budget, on_budget_alert=alerts.append)
    done = 0
    caplog.set_level(logging.WARNING, logger="ratepilot")
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        with pytest.raises(BudgetExceeded) as info:
            for _ in range(1_000):
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=60)
                done += 1
        sent = total_requests(sim)
        with pytest.raises(BudgetExceeded):  # and it stays stopped
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=60)
    assert done >= 3 and sent == done  # the refused requests were never sent
    cost = pilot.usage().cost_usd
    assert cost <= budget
    assert cost == pytest.approx(billed_usd(sim), rel=1e-9, abs=1e-12)
    assert cost + info.value.worst_case_usd > budget
    assert [a.threshold for a in alerts] == [0.5, 0.8, 1.0] and alerts[-1].refused
    assert "50% reached" in caplog.text and "80% reached" in caplog.text and "100% reached" in caplog.text


async def test_streamed_usage_is_settled_and_priced(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    pilot = Pilot(clock=clock)
    async with pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text
    usage = pilot.usage().models["gpt-4o-mini"]
    assert usage.completion_tokens > 0 and usage.unmetered == 0
    assert pilot.usage().cost_usd == pytest.approx(billed_usd(sim), rel=1e-9)


def test_sync_stream_without_usage_is_counted_unmetered(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    pilot = Pilot(clock=clock)
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        with client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=10, stream=True) as s:
            chunks = list(s)
        assert chunks
        with_usage = client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, max_tokens=10, stream=True, stream_options={"include_usage": True}
        )
        for _ in with_usage:
            pass
    usage = pilot.usage().models["gpt-4o-mini"]
    assert usage.requests == 2 and usage.unmetered == 1
    assert "include_usage" in caplog.text


def test_price_overrides_and_batch_discount(clock: FakeClock) -> None:
    prices = PriceTable().with_overrides({"my-model": ModelPrice(1.0, 2.0)})
    pilot = Pilot(clock=clock, prices=prices)
    from ratepilot.client import Usage

    assert pilot.ledger.record("my-model", Usage(1_000_000, 1_000_000)) == pytest.approx(3.0)
    assert pilot.ledger.record("my-model", Usage(1_000_000, 0), batch=True) == pytest.approx(0.5)
    report = pilot.usage().to_dict()
    assert report["cost_usd"] == pytest.approx(3.5)
    assert report["models"]["my-model"]["total_tokens"] == 3_000_000


def test_background_responses_are_billed_once_when_a_poll_sees_them_finish(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    pilot = Pilot(clock=clock)
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        sync = client.responses.create(model="gpt-4o-mini", input="say hi", max_output_tokens=20)
        assert sync.status == "completed"
        queued = client.responses.create(model="gpt-4o-mini", input="say hi", max_output_tokens=20, background=True)
        assert queued.status in ("queued", "in_progress")
        while (final := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
            clock.advance(1.0)
        client.responses.retrieve(queued.id)  # polled again after it finished: counted once
    assert final.status == "completed"
    usage = pilot.usage()
    assert usage.models["gpt-4o-mini"].requests == 2 and usage.models["gpt-4o-mini"].unmetered == 0
    assert usage.cost_usd == pytest.approx(billed_usd(sim), rel=1e-9)


async def test_budget_holds_under_concurrency(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str
) -> None:
    import asyncio

    budget = 0.0001
    sim = make_sim(rpm=10_000, tpm=10_000_000)
    pilot = Pilot(clock=clock, budget_usd=budget)
    async with pilot.wrap(AsyncOpenAI(base_url=sim.base_url, api_key=api_key)) as client:

        async def one(i: int) -> bool:
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"story {i}"}], max_tokens=40
                )
            except BudgetExceeded:
                return False
            return True

        outcomes = await asyncio.gather(*(one(i) for i in range(40)))
    assert any(outcomes) and not all(outcomes)
    assert total_requests(sim) == sum(outcomes)  # refused requests were never sent
    assert pilot.usage().cost_usd <= budget
    assert pilot.usage().cost_usd == pytest.approx(billed_usd(sim), rel=1e-9)
