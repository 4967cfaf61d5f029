"""The public API is small, explicit, and every advertised name resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ratepilot

EXPECTED = {
    "Pilot", "UsageReport", "LimitState", "BudgetAlert", "RetryPolicy",
    "RatePilotError", "QuotaExhausted", "BudgetExceeded", "RequestTooLarge", "RetriesExhausted", "InputError",
    "Limiter", "Scope", "Cost", "Priority", "key_id_for",
    "wait", "wait_async", "WaitTimeout", "PollPolicy", "WaitProgress", "WebhookReceiver",
    "BatchRunner", "BatchConfig", "BatchInputError",
    "run_job", "arun_job", "RunOptions", "RunSummary", "read_requests", "read_results",
    "Simulator", "SimConfig", "FakeClock", "SystemClock",
}  # fmt: skip


def test_all_is_exactly_the_public_api() -> None:
    assert set(ratepilot.__all__) == EXPECTED | {"__version__"}
    assert set(ratepilot._EXPORTS) == EXPECTED  # the lazy map and __all__ agree


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(ratepilot, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = ratepilot.DoesNotExist  # type: ignore[attr-defined]


def test_errors_share_one_base() -> None:
    for name in ("QuotaExhausted", "BudgetExceeded", "RequestTooLarge", "RetriesExhausted", "InputError"):
        assert issubclass(getattr(ratepilot, name), ratepilot.RatePilotError)


def test_import_is_light() -> None:
    # The CLI imports ratepilot on every invocation: the web stack and the SDK must not come with it.
    code = "import sys, ratepilot; print(','.join(m for m in ('starlette', 'uvicorn', 'openai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
