"""ratepilot: run OpenAI API workloads at the edge of the account's rate limits.

    import ratepilot
    from openai import OpenAI

    pilot = ratepilot.Pilot()                   # memory limiter; Pilot(store="sqlite:///..." | "redis://...")
    client = pilot.wrap(OpenAI())               # a real OpenAI client; every call now goes through the pilot
    pilot.limits("gpt-4o-mini"); pilot.usage()
    ratepilot.wait(client, batch)               # budgeted, low-priority polling (or webhook-driven)

Names are imported lazily (PEP 562): ``import ratepilot`` stays cheap for the CLI, and the simulator's web
stack is only loaded by code that uses it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the drop-in client
    "Pilot": "ratepilot.client",
    "UsageReport": "ratepilot.client",
    "LimitState": "ratepilot.client",
    "BudgetAlert": "ratepilot.client",
    "RetryPolicy": "ratepilot.retry",
    # errors
    "RatePilotError": "ratepilot.errors",
    "QuotaExhausted": "ratepilot.errors",
    "BudgetExceeded": "ratepilot.errors",
    "RequestTooLarge": "ratepilot.errors",
    "RetriesExhausted": "ratepilot.errors",
    "InputError": "ratepilot.errors",
    # the limiter
    "Limiter": "ratepilot.limits",
    "Scope": "ratepilot.limits",
    "Cost": "ratepilot.limits",
    "Priority": "ratepilot.limits",
    "key_id_for": "ratepilot.limits",
    # waiting
    "wait": "ratepilot.poll",
    "wait_async": "ratepilot.poll",
    "WaitTimeout": "ratepilot.poll",
    "PollPolicy": "ratepilot.poll",
    "WaitProgress": "ratepilot.poll",
    "WebhookReceiver": "ratepilot.webhooks",
    # job runners
    "BatchRunner": "ratepilot.batch",
    "BatchConfig": "ratepilot.batch",
    "BatchInputError": "ratepilot.batch",
    "run_job": "ratepilot.run",
    "arun_job": "ratepilot.run",
    "RunOptions": "ratepilot.run",
    "RunSummary": "ratepilot.run",
    "read_requests": "ratepilot.requests",
    "read_results": "ratepilot.results",
    # the simulator
    "Simulator": "ratepilot.sim",
    "SimConfig": "ratepilot.sim",
    # time
    "FakeClock": "ratepilot.clock",
    "SystemClock": "ratepilot.clock",
}

__all__ = [
    "BatchConfig",
    "BatchInputError",
    "BatchRunner",
    "BudgetAlert",
    "BudgetExceeded",
    "Cost",
    "FakeClock",
    "InputError",
    "LimitState",
    "Limiter",
    "Pilot",
    "PollPolicy",
    "Priority",
    "QuotaExhausted",
    "RatePilotError",
    "RequestTooLarge",
    "RetriesExhausted",
    "RetryPolicy",
    "RunOptions",
    "RunSummary",
    "Scope",
    "SimConfig",
    "Simulator",
    "SystemClock",
    "UsageReport",
    "WaitProgress",
    "WaitTimeout",
    "WebhookReceiver",
    "__version__",
    "arun_job",
    "key_id_for",
    "read_requests",
    "read_results",
    "run_job",
    "wait",
    "wait_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ratepilot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .batch import BatchConfig, BatchInputError, BatchRunner
    from .client import BudgetAlert, LimitState, Pilot, UsageReport
    from .clock import FakeClock, SystemClock
    from .errors import (
        BudgetExceeded,
        InputError,
        QuotaExhausted,
        RatePilotError,
        RequestTooLarge,
        RetriesExhausted,
    )
    from .limits import Cost, Limiter, Priority, Scope, key_id_for
    from .poll import PollPolicy, WaitProgress, WaitTimeout, wait, wait_async
    from .requests import read_requests
    from .results import read_results
    from .retry import RetryPolicy
    from .run import RunOptions, RunSummary, arun_job, run_job
    from .sim import SimConfig, Simulator
    from .webhooks import WebhookReceiver
