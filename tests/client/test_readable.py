"""`pilot.usage()` and `pilot.limits()` read well: rounded figures in repr, rich and JSON; a summary for people."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from openai import OpenAI
from rich.pretty import pretty_repr

from ratepilot.client import Pilot, Usage
from ratepilot.clock import FakeClock
from ratepilot.sim import Simulator

KEY = "test-key-readable-0123456789"
MSG = [{"role": "user", "content": "hello there"}]
LONG_FLOAT = re.compile(r"\d\.\d{7,}")  # what a raw float looks like: 27.000179751999895


def _pilot_after_traffic(make_sim: Callable[..., Simulator], clock: FakeClock) -> Pilot:
    sim = make_sim(rpm=500, tpm=200_000)
    pilot = Pilot(clock=clock)
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    pilot.ledger.waited(1.0 / 3)  # some waiting, as a float sum would leave it
    clock.advance(0.0371)  # the buckets refill part of a unit: the limiter's remaining is fractional now
    return pilot


def test_limits_are_rounded_everywhere(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    pilot = _pilot_after_traffic(make_sim, clock)
    state = pilot.limits("gpt-4o-mini")
    raw = state.limiter["rpm"].remaining
    assert raw != int(raw)  # the field keeps full precision...
    for text in (repr(state), pretty_repr(state)):  # ... what is shown does not
        assert not LONG_FLOAT.search(text), text
        assert f"'remaining': {int(raw)}" in text
    data = state.to_dict()
    assert data["limiter"]["rpm"]["remaining"] == int(raw) and isinstance(data["limiter"]["rpm"]["remaining"], int)
    assert data["limiter"]["rpm"]["limit"] == 500 and data["limiter"]["rpm"]["window_s"] == 60
    assert data["observed_ago"] == 0.037
    json.dumps(data)
    text = str(state)
    assert text.splitlines()[0].startswith("gpt-4o-mini (key k") and "headers from 38ms ago" in text
    assert re.search(r"requests\s+497 left of 500\s+full in \d+ms", text), text
    assert "tokens" in text and "200,000" in text
    assert KEY not in repr(state) + text + pretty_repr(state)


def test_limits_before_any_answer(clock: FakeClock) -> None:
    state = Pilot(clock=clock).limits("gpt-4o-mini")
    assert str(state) == "gpt-4o-mini: no rate-limit headers seen yet"
    assert repr(state).startswith("LimitState(model='gpt-4o-mini', key_id='anonymous', observed_ago=None")


def test_usage_is_rounded_and_summarized(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    pilot = _pilot_after_traffic(make_sim, clock)
    pilot.ledger.record("gpt-4o", Usage(1_000, 10, 0))  # a cost that is not a round number of dollars
    usage = pilot.usage()
    assert usage.wait_seconds != round(usage.wait_seconds, 3)
    for text in (repr(usage), pretty_repr(usage)):
        assert not LONG_FLOAT.search(text), text
        assert "wait_seconds=0.333" in text and "requests=3" in text and "ModelUsage(" in text
        assert "unmetered" not in text and "cached_tokens" not in text  # left out at their defaults
    data = usage.to_dict()
    assert data["wait_seconds"] == 0.333 and data["cost_usd"] == round(usage.cost_usd, 6)
    assert data["models"]["gpt-4o"]["total_tokens"] == 1_010 and data["models"]["gpt-4o-mini"]["requests"] == 3
    json.dumps(data)
    lines = str(usage).splitlines()
    assert lines[0].startswith("3 HTTP requests (0 retries, 0 rate-limited, 0 errors), 0.3s waiting; cost $0.")
    assert lines[1].startswith("  gpt-4o: 1 request, 1,000 in / 10 out tokens, $0.")
    assert lines[2].startswith("  gpt-4o-mini: 3 requests,")
