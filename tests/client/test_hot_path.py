"""Per-request work stays small: bodies parsed once, the key hashed once, no tokenizer pass for the budget,
and the memory of accounted objects bounded."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from openai import OpenAI

import ratepilot.client.core as core_module
from ratepilot.client import Pilot
from ratepilot.client.core import ClientCore
from ratepilot.client.ledger import UsageLedger
from ratepilot.client.plan import parse_json
from ratepilot.clock import FakeClock
from ratepilot.limits.types import key_id_for
from ratepilot.protocol.pricing import PriceTable
from ratepilot.protocol.tokens import count_text
from ratepilot.retry import RetryPolicy
from ratepilot.sim import Simulator

MSG = [{"role": "user", "content": "hello there"}]


def _counting(monkeypatch: pytest.MonkeyPatch, func: Callable[..., Any], calls: list[str]) -> None:
    """Count the calls of ``func`` made from this (the client's) thread; the simulator serves from its own thread.

    However ratepilot's modules import it, every call is seen: each module of the package that binds the function
    (the one defining it, and any that did ``from ... import`` it) gets the spy."""
    me = threading.current_thread()

    def spy(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is me:
            calls.append(func.__name__)
        return func(*args, **kwargs)

    bindings = [
        (module, name)
        for module_name, module in list(sys.modules.items())
        if module_name == "ratepilot" or module_name.startswith("ratepilot.")
        for name, value in list(vars(module).items())
        if value is func
    ]
    assert bindings, f"{func.__qualname__} is bound in no ratepilot module"
    for module, name in bindings:
        monkeypatch.setattr(module, name, spy)


def test_bodies_parsed_once_key_hashed_once_no_tokenizer_for_the_budget(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(rpm=1_000, tpm=1_000_000)
    parses: list[str] = []
    hashes: list[str] = []
    tokenizer: list[str] = []
    _counting(monkeypatch, parse_json, parses)  # request and response bodies
    _counting(monkeypatch, key_id_for, hashes)
    _counting(monkeypatch, count_text, tokenizer)
    pilot = Pilot(clock=clock, budget_usd=1.0)
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert len(parses) == 3 * 2  # each request body once, each response body once
    assert len(hashes) == 1
    assert tokenizer == []  # the budget's worst case reuses the admission estimate
    assert pilot.usage().models["gpt-4o-mini"].requests == 3


def test_accounted_ids_are_bounded(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "ACCOUNTED_IDS_KEPT", 3)
    # The client core, on its own: no Pilot, no transport.
    core = ClientCore(limiter=None, retry=RetryPolicy(), ledger=UsageLedger(PriceTable()), budget=None, clock=clock)

    def finished_run(i: int) -> dict[str, Any]:
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        return {"object": "thread.run", "id": f"run_{i}", "status": "completed", "model": "gpt-4o-mini", "usage": usage}

    for i in range(10):
        core.account_object(finished_run(i))
        core.account_object(finished_run(i))  # polled again: recorded once
    assert len(core._accounted) == 3
    assert core.ledger.snapshot().models["gpt-4o-mini"].prompt_tokens == 10 * 10
