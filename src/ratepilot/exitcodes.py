"""The exit codes of every ``ratepilot`` command: one scheme, so a script reads them the same way everywhere.

Which error becomes which code is decided in :mod:`ratepilot.cli.exits` (it knows every layer's errors; this
module, at the bottom, knows none).

A number keeps its meaning across commands (``run``, ``batch``, ``limits``, ``sim``, ``webhooks``); a command
uses the subset that can happen to it. The codes are stable: scripts may rely on them.
"""

from __future__ import annotations

import enum

__all__ = ["EXIT_CODES_HELP", "STOP_EXIT_CODES", "ExitCode"]


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
    HTTP_ERRORS = 10  # done, but some results are errors (HTTP 400/404..., or a batch line unanswered): counted by code
    STORE_UNAVAILABLE = 11  # the shared limiter store (Redis, SQLite) did not answer: stopped, progress kept
    WRITE_FAILED = 12  # the results could not be written (disk full, read-only): stopped; rerun once there is room
    INTERRUPTED = 130  # Ctrl-C: progress kept, rerun to resume


EXIT_CODES_HELP = (
    "Exit codes (every ratepilot command): 0 ok, 1 unexpected error, 2 bad input (nothing sent), 3 insufficient "
    "quota (progress kept), 4 budget reached (progress kept), 5 results file or job name belongs to another job, "
    "6 incomplete (rerun / wait again), 7 API key rejected, 8 API refused / unreachable / retries exhausted, "
    "9 cannot listen (port busy), 10 done but some results are errors, 11 limiter store unavailable, "
    "12 results could not be written (disk full), 130 interrupted."
)
"""One sentence for ``--help`` texts."""


STOP_EXIT_CODES: dict[str, ExitCode] = {
    "quota": ExitCode.QUOTA,
    "budget": ExitCode.BUDGET,
    "auth": ExitCode.AUTH,
    "hopeless": ExitCode.API_ERROR,
    "unreachable": ExitCode.API_ERROR,
    "store": ExitCode.STORE_UNAVAILABLE,
    "write": ExitCode.WRITE_FAILED,
}
"""Why a job stopped early (its runner's ``stop``: ``run``, ``ratepilot.ray``) -> its exit code."""
