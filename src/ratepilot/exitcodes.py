"""The exit codes of every ``ratepilot`` command: one scheme, so a script reads them the same way everywhere.

A number keeps its meaning across commands (``run``, ``batch``, ``limits``, ``sim``, ``webhooks``); a command
uses the subset that can happen to it. The codes are stable: scripts may rely on them.
"""

from __future__ import annotations

import enum

__all__ = ["EXIT_CODES_HELP", "ExitCode", "classify_exit"]


class ExitCode(enum.IntEnum):
    """What a ``ratepilot`` command's exit status means."""

    OK = 0  # done: every request has its final answer / the command did what it was asked
    UNEXPECTED = 1  # an unexpected error (a bug, an unreadable or unwritable file)
    BAD_INPUT = 2  # a bad file, flag or usage: nothing was sent
    QUOTA = 3  # insufficient_quota or a billing limit: stopped at once, progress kept; add credit, rerun
    BUDGET = 4  # --budget-usd reached: stopped before crossing it, progress kept; raise it, rerun
    CONFLICT = 5  # the results file or the job name belongs to another job: nothing was written
    INCOMPLETE = 6  # not finished yet / some requests unanswered: rerun (or wait) again
    AUTH = 7  # the API key was rejected (401/403)
    API_ERROR = 8  # the API refused the work, retries ran out, or the API could not be reached
    CANNOT_LISTEN = 9  # the port is busy (or otherwise cannot be bound)
    HTTP_ERRORS = 10  # done, but some results are HTTP errors (400, 404...): the summary counts them by code
    STORE_UNAVAILABLE = 11  # the shared limiter store (Redis, SQLite) did not answer: stopped, progress kept
    WRITE_FAILED = 12  # the results could not be written (disk full, read-only): stopped; rerun once there is room
    INTERRUPTED = 130  # Ctrl-C: progress kept, rerun to resume


EXIT_CODES_HELP = (
    "Exit codes (every ratepilot command): 0 ok, 1 unexpected error, 2 bad input (nothing sent), 3 insufficient "
    "quota (progress kept), 4 budget reached (progress kept), 5 results file or job name belongs to another job, "
    "6 incomplete (rerun / wait again), 7 API key rejected, 8 API refused / unreachable / retries exhausted, "
    "9 cannot listen (port busy), 10 done but some results are HTTP errors, 11 limiter store unavailable, "
    "12 results could not be written (disk full), 130 interrupted."
)
"""One sentence for ``--help`` texts."""


def classify_exit(exc: BaseException) -> tuple[ExitCode, str] | None:
    """The exit code and a one-line, key-free message for an error a command lets reach the user; None when
    it is not one ratepilot knows (a bug: the command lets it become a traceback with :attr:`UNEXPECTED`).

    Shared by every CLI, so a quota error is 3 and a refused key 7 whichever command met it. An error the
    Pilot raised inside the SDK's HTTP call may reach here wrapped by the SDK: the chain is searched first.
    """
    import openai

    from .batch.runner import JobConflictError, JobNotFoundError
    from .errors import (
        BudgetExceeded,
        InputError,
        QuotaExhausted,
        RatePilotError,
        RetriesExhausted,
        StoreUnavailable,
        _scrub,
    )
    from .joblock import JobLocked
    from .results import ForeignResultsError
    from .run.sender import AuthFailed, unwrap_pilot_error

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
    if isinstance(exc, RatePilotError):  # RequestTooLarge, RetriesExhausted, ...: the API would not do the work
        return ExitCode.API_ERROR, exc.message
    if isinstance(exc, ForeignResultsError | JobConflictError):
        return ExitCode.CONFLICT, _scrub(str(exc))
    if isinstance(exc, JobNotFoundError):
        return ExitCode.BAD_INPUT, _scrub(str(exc))
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
