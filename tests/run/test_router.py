"""The tier router: the cheapest lane that meets the deadline, falling back from flex to standard when (and only
when) the deadline requires it; billed by the tier that served each request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.engine.sender import Answer, HttpSender
from ratepilot.protocol.pricing import PriceTable
from ratepilot.requests import RequestLine
from ratepilot.retry import RetryPolicy
from ratepilot.run import ExitCode, RunOptions, run_job
from ratepilot.run.mode import choose_mode
from ratepilot.run.router import TierRouter, flex_patience
from ratepilot.sim import Simulator

from .conftest import KEY, chat

UNAVAILABLE = {"error": {"message": "Resource Unavailable", "type": "rate_limit_error", "code": "resource_unavailable"}}


class Scripted:
    """An inner sender answering at once (each answer takes ``seconds`` of the fake clock); flex is refused
    while ``flex_down`` is set. It records the tier each request was sent with."""

    def __init__(self, clock: FakeClock, seconds: float = 0.1) -> None:
        self.clock = clock
        self.seconds = seconds
        self.flex_down = False
        self.sent: list[str | None] = []

    async def send(self, request: RequestLine) -> Answer:
        tier = request.body.get("service_tier")
        self.sent.append(tier)
        self.clock.advance(self.seconds)
        if tier == "flex" and self.flex_down:
            return Answer(429, "", UNAVAILABLE, {})
        usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        body = {"model": "gpt-4o-mini", "service_tier": tier if tier != "auto" else "default", "usage": usage}
        return Answer(200, "", body, {})


def _line(i: int, url: str = "/v1/chat/completions") -> RequestLine:
    return RequestLine(i, f"req-{i}", "POST", url, dict(chat(i)))


async def _run(router: TierRouter, n: int) -> None:
    for i in range(n):
        await router.send(_line(i))


async def test_without_a_deadline_every_request_goes_to_flex() -> None:
    clock = FakeClock(autojump=False)
    inner = Scripted(clock)
    router = TierRouter(inner, tier="auto", remaining=20, clock=clock)
    await _run(router, 20)
    assert inner.sent == ["flex"] * 20
    assert router.counts.flex == 20 and router.counts.fell_back == 0
    standard = PriceTable().cost("gpt-4o-mini", 100, 10)
    assert router.counts.saved_usd == pytest.approx(20 * standard / 2)


async def test_an_answer_served_by_fast_counts_as_priority_and_costs_double() -> None:
    """``fast`` is priority's 2026 name: an answer that says so is a priority one, never counted (or saved) as
    standard."""

    class AnswersFast(Scripted):
        async def send(self, request: RequestLine) -> Answer:
            answer = await super().send(request)
            return Answer(answer.status_code, "", {**answer.body, "service_tier": "fast"}, {})

    clock = FakeClock(autojump=False)
    inner = AnswersFast(clock)
    router = TierRouter(inner, tier="priority", remaining=3, clock=clock)
    await _run(router, 3)
    assert inner.sent == ["priority"] * 3
    assert (router.counts.priority, router.counts.standard) == (3, 0)
    standard = PriceTable().cost("gpt-4o-mini", 100, 10)
    assert router.counts.saved_usd == pytest.approx(-3 * standard)  # twice the standard price: a cost, not a saving


async def test_a_generous_deadline_uses_flex_once_the_pace_is_known_and_a_tight_one_stays_standard() -> None:
    clock = FakeClock(autojump=False)
    inner = Scripted(clock)  # 10 requests/s: 100 requests take 10 s
    generous = TierRouter(inner, tier="auto", remaining=100, clock=clock, deadline_at=clock.now() + 600)
    await _run(generous, 100)
    assert inner.sent[: TierRouter.MIN_SAMPLES] == ["default"] * TierRouter.MIN_SAMPLES  # measuring the pace
    assert set(inner.sent[TierRouter.MIN_SAMPLES :]) == {"flex"}

    clock = FakeClock(autojump=False)
    inner = Scripted(clock)
    tight = TierRouter(inner, tier="auto", remaining=100, clock=clock, deadline_at=clock.now() + 15)
    await _run(tight, 100)
    assert set(inner.sent) == {"default"}  # flex's answer time (a minute, until seen) would miss the deadline
    assert tight.counts.chose_standard == 100


async def test_flex_that_stays_unavailable_falls_back_to_standard_and_a_fixed_tier_never_does() -> None:
    clock = FakeClock()  # autojump: the router's backoff sleeps move it
    inner = Scripted(clock)
    inner.flex_down = True
    # No deadline: flex is waited for (backing off) up to the patience, then the request goes to standard.
    router = TierRouter(inner, tier="auto", remaining=2, clock=clock, patience=20.0, seed=1)
    await _run(router, 2)
    first = inner.sent[: inner.sent.index("default") + 1]
    assert 3 <= len(first) - 1 <= 8 and set(first[:-1]) == {"flex"}  # a growing backoff, not a storm
    assert (router.counts.fell_back, router.counts.standard, router.counts.flex) == (2, 2, 0)

    inner.sent.clear()
    fixed = TierRouter(inner, tier="flex", remaining=1, clock=clock)
    answer = await fixed.send(_line(1))
    assert answer.status_code == 429 and inner.sent == ["flex"]  # --tier flex: the caller asked for flex only


async def test_flex_is_waited_for_while_the_deadline_allows_then_the_rest_meets_it_at_standard() -> None:
    clock = FakeClock()  # autojump: the router's backoff sleeps move it; each answer takes 0.1 s
    inner = Scripted(clock)
    inner.flex_down = True
    deadline = clock.now() + 10.0
    router = TierRouter(inner, tier="auto", remaining=20, clock=clock, deadline_at=deadline, flex_answer_s=0.2)
    await _run(router, 20)
    assert clock.now() <= deadline  # met: the fallback came while the rest still fitted
    assert router.counts.standard == 20 and router.counts.fell_back >= 1
    first_fallback = inner.sent.index("flex")
    assert inner.sent[first_fallback : first_fallback + 3] == ["flex", "flex", "flex"]  # it did wait for flex


async def test_other_endpoints_and_a_lines_own_tier_are_left_alone() -> None:
    clock = FakeClock(autojump=False)
    inner = Scripted(clock)
    router = TierRouter(inner, tier="flex", remaining=2, clock=clock)
    embedding = RequestLine(1, "e", "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    await router.send(embedding)
    own = _line(2)
    own.body["service_tier"] = "priority"
    await router.send(own)
    assert inner.sent == [None, "priority"]


def test_the_batch_lane_is_chosen_for_a_deadline_of_a_day_and_patience_is_sized_from_the_deadline() -> None:
    day = choose_mode("auto", pending_requests=10, estimated_cost_usd=0.01, deadline_s=86_400, tier="auto")
    assert day.mode == "batch" and "--tier auto" in day.reason
    assert choose_mode("auto", pending_requests=10, estimated_cost_usd=0.01, deadline_s=86_400).mode == "online"
    assert choose_mode("auto", pending_requests=10, estimated_cost_usd=0.01, deadline_s=3_600, tier="auto").mode == (
        "online"
    )
    assert flex_patience(None) == 300.0 and flex_patience(60.0) == 6.0 and flex_patience(1.0) == 1.0


def _requests(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "req.jsonl"
    path.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(n)))
    return path


def test_against_the_simulator_flex_is_billed_at_its_price_and_unavailability_falls_back(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = make_sim(latency_ms=1)
    out = tmp_path / "flex.jsonl"
    summary = run_job(RunOptions(_requests(tmp_path, 20), out, base_url=sim.base_url, api_key=KEY, tier="auto"))
    assert summary.exit_code == ExitCode.OK, summary
    assert summary.lanes["flex"] == 20 and summary.lanes["fell_back"] == 0
    billed = sum(u["cost_usd"] for u in sim.stats()["usage"].values())
    assert summary.cost_usd == pytest.approx(billed)  # the ledger bills what the server billed: the flex price
    assert summary.lanes["saved_usd"] == pytest.approx(billed, rel=1e-3)  # half price: saved as much as paid

    # Flex never has capacity, and the deadline is 6 s for 2 s of work (10 requests/s): the router learns the
    # pace with a few requests at standard, tries flex, waits for it while the deadline allows, then sends the
    # rest at standard.
    down = make_sim(latency_ms=1, flex_unavailable_p=1.0, rpm=600, quantum_s=1.0)
    with Pilot(retry=RetryPolicy.seeded(3, unavailable_patience=0.0)) as pilot:  # as run sets it for the router
        options = RunOptions(_requests(tmp_path, 20), tmp_path / "down.jsonl", base_url=down.base_url, api_key=KEY)
        options.tier, options.deadline_s, options.flex_answer_s = "auto", 6.0, 0.2
        summary = run_job(options, pilot=pilot)
        usage: Any = pilot.usage()
    assert summary.exit_code == ExitCode.OK, summary  # (whether the deadline was met: the fake-clock test above)
    assert summary.lanes["standard"] == 20 and summary.lanes["fell_back"] >= 1, summary.lanes
    stats = down.stats()
    assert stats["tiers"]["default"] == 20 and stats["tiers"]["flex_unavailable"] >= summary.lanes["fell_back"]
    # The client counted as rate limits exactly the server's real rate-limit refusals: none of the flex ones.
    assert usage.rate_limited == stats["rate_limited"]["total"] <= 2


async def test_flex_requests_wait_15_minutes_for_their_answer_unless_a_timeout_is_given() -> None:
    flex, standard = _line(1), _line(2)
    flex.body["service_tier"] = "flex"
    with Pilot() as pilot:
        default = HttpSender(pilot, "http://127.0.0.1:9/v1", "test-key")
        given = HttpSender(pilot, "http://127.0.0.1:9/v1", "test-key", timeout_s=30.0)
        try:
            assert default.client.timeout.read == 600.0
            assert default.timeout_for(flex).read == 900.0
            assert default.timeout_for(standard) is httpx2.USE_CLIENT_DEFAULT
            assert given.timeout_for(flex) is httpx2.USE_CLIENT_DEFAULT and given.client.timeout.read == 30.0
        finally:
            await default.aclose()
            await given.aclose()


def test_the_run_command_takes_a_tier_and_auto_lets_the_mode_follow(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    requests = _requests(tmp_path, 3)
    env = {"OPENAI_API_KEY": KEY}
    bad = CliRunner().invoke(app, ["run", str(requests), "-o", str(tmp_path / "x.jsonl"), "--tier", "cheap"], env=env)
    assert bad.exit_code == ExitCode.BAD_INPUT and "--tier" in bad.output
    sim = make_sim()
    args = ["run", str(requests), "-o", str(tmp_path / "out.jsonl"), "--base-url", sim.base_url, "--json"]
    result = CliRunner().invoke(app, [*args, "--tier", "auto"], env=env)
    assert result.exit_code == ExitCode.OK, result.output
    summary = json.loads(result.output)
    assert summary["mode"] == "online" and summary["mode_reason"].startswith("auto:")  # --tier auto: --mode auto
    assert summary["lanes"]["flex"] == 3  # no deadline: all flex
