"""Which exit code (:class:`ratepilot.exitcodes.ExitCode`) and one-line message an error reaching a command gets.

Here, in the command layer, because it must know every layer's errors (the batch runner's, the engine's, the
client's, the SDK's); :mod:`ratepilot.exitcodes` only names the codes.
"""

from __future__ import annotations

import openai

from ..batch.runner import JobConflictError, JobNotFoundError
from ..errors import (
    AuthFailed,
    BudgetExceeded,
    InputError,
    QuotaExhausted,
    RatePilotError,
    RetriesExhausted,
    StoreUnavailable,
    _scrub,
    unwrap_pilot_error,
)
from ..exitcodes import ExitCode
from ..joblock import JobLocked
from ..results import ForeignResultsError

__all__ = ["classify_exit"]


def classify_exit(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and a one-line, key-free message for an error a command lets reach the user; None when
    it is not one ratepilot knows (a bug: the command lets it become a traceback with :attr:`UNEXPECTED`).

    Shared by every CLI, so a quota error is 3 and a refused key 7 whichever command met it. An error the
    Pilot raised inside the SDK's HTTP call may reach here wrapped by the SDK: the chain is searched first.
    """
    inner = unwrap_pilot_error(exc)
    if inner is not None:
        exc = inner
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted: progress so far is kept; rerun the same command to resume"
    if isinstance(exc, QuotaExhausted):
        return ExitCode.QUOTA, f"{exc.message} Progress so far is kept: rerun the same command to resume."
    if isinstance(exc, BudgetExceeded):
        return ExitCode.BUDGET, f"{exc.message} Progress so far is kept."
    if isinstance(exc, InputError):
        return ExitCode.BAD_INPUT, exc.message
    if isinstance(exc, JobLocked):
        return ExitCode.CONFLICT, exc.message
    if isinstance(exc, StoreUnavailable):
        return ExitCode.STORE_UNAVAILABLE, exc.message
    if isinstance(exc, AuthFailed):
        return ExitCode.AUTH, exc.message
    if isinstance(exc, RetriesExhausted) and exc.last_status is None:
        return ExitCode.API_ERROR, f"{exc.message}{_where(exc)}"
    if isinstance(exc, ForeignResultsError | JobConflictError):
        return ExitCode.CONFLICT, exc.message
    if isinstance(exc, JobNotFoundError):
        return ExitCode.BAD_INPUT, exc.message
    if isinstance(exc, RatePilotError):  # RequestTooLarge, RetriesExhausted, ...: the API would not do the work
        return ExitCode.API_ERROR, exc.message
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ExitCode.AUTH, _scrub(f"the API key was rejected ({exc.status_code}): {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        return ExitCode.API_ERROR, _scrub(f"the API refused ({exc.status_code}): {exc.message}")
    if isinstance(exc, openai.APIConnectionError):
        return ExitCode.API_ERROR, _scrub(f"cannot reach the API ({exc}); rerun the same command to resume")
    return None


def _where(exc: BaseException) -> str:
    """``(cannot reach http://host:port)`` for an error raised through a wrapped SDK client, which carries the
    request it was about (scheme, host and port only: a URL's path or query is not for an error line)."""
    url = getattr(getattr(exc, "request", None), "url", None)
    if url is None:
        return ""
    port = f":{url.port}" if url.port else ""
    return f" (cannot reach {url.scheme}://{url.host}{port})"
