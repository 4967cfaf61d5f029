"""An Exchange works with a ClientCore alone: no Pilot, no transport. The decisions of one request — wait out a
rate-limit refusal, then deliver and account the answer — driven by hand, step by step, on a fake clock."""

from __future__ import annotations

import httpx2
import orjson

from ratepilot.client.core import ClientCore
from ratepilot.client.exchange import Deliver, Exchange, RetryAfter
from ratepilot.client.ledger import UsageLedger
from ratepilot.client.plan import plan_request
from ratepilot.clock import FakeClock
from ratepilot.limits import Limiter, Priority, Scope
from ratepilot.protocol.errors import LimitKind, rate_limit_error
from ratepilot.protocol.pricing import PriceTable
from ratepilot.retry import RetryPolicy

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
HEADERS = {
    "content-type": "application/json",
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
}


def test_an_exchange_needs_only_the_core() -> None:
    clock = FakeClock()
    ledger = UsageLedger(PriceTable())
    limiter = Limiter("memory://", clock=clock, start_burst=60)
    core = ClientCore(limiter=limiter, retry=RetryPolicy.seeded(1), ledger=ledger, budget=None, clock=clock)
    raw = orjson.dumps(BODY)
    request = httpx2.Request("POST", "http://sim.test/v1/chat/completions", content=raw)
    plan = plan_request("POST", "/v1/chat/completions", "application/json", raw)
    exchange = Exchange(core, plan, Scope("key", "gpt-4o-mini"), Priority.NORMAL, None, 0.0, httpx2)
    exchange.on_request(request)

    def attempt(status: int, body: object) -> object:
        with exchange.admission():
            grant = limiter.acquire(exchange.scope, exchange.cost)
        exchange.sending(grant)
        data = orjson.dumps(body)
        step, _ = exchange.on_response(request, httpx2.Response(status, headers=HEADERS, content=data), data)
        return step

    refused = rate_limit_error("gpt-4o-mini", "org", LimitKind.RPM, 60, 60, 1, 2.0)
    step = attempt(429, refused)
    assert isinstance(step, RetryAfter) and step.after == 2.0  # the server's "try again in 2s"
    exchange.waited(step.after, retry=True)
    usage = {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}
    step = attempt(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini", "usage": usage})
    assert isinstance(step, Deliver)
    report = ledger.snapshot()
    assert (report.requests, report.retries, report.rate_limited) == (2, 1, 1)
    assert report.models["gpt-4o-mini"].prompt_tokens == 8
    assert core.latest_headers("gpt-4o-mini", "key") is not None  # remembered for Pilot.limits()
    assert "http://sim.test:" in core.answered_hosts
