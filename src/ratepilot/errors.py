"""The errors ratepilot raises: each one says what happened and what a person can do about it.

Every error carries structured fields (for code) and a message (for people). None of them ever holds an API
key: messages are built only from ids, model names, numbers and the server's own (already redacted) text,
and :func:`_scrub` removes anything key-shaped that might still slip in through a server message.

Raised through a wrapped SDK client (``pilot.wrap(OpenAI())``), :class:`QuotaExhausted`,
:class:`RequestTooLarge` and :class:`RetriesExhausted` are also the SDK exception the SDK itself would have
raised for the same answer (``openai.RateLimitError``, ``InternalServerError``, ``APIConnectionError``...),
with the response and body attached, so ``except openai.RateLimitError`` keeps working: see
:mod:`ratepilot.client.sdk_errors`. This module stays free of the SDK (importing it is cheap).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.errors import ErrorInfo

__all__ = [
    "AuthFailed",
    "BudgetExceeded",
    "InputError",
    "QuotaExhausted",
    "RatePilotError",
    "RequestTooLarge",
    "RetriesExhausted",
    "StoreUnavailable",
    "TransientFailure",
    "unwrap_pilot_error",
]

# sk-..., sk-proj-..., sess-... style secrets; a redacted "sk-...abcd" does not match (needs 8+ key chars).
_KEY_SHAPED = re.compile(r"\b(sk|sess|rk)-[A-Za-z0-9_\-]{8,}")


def _scrub(text: str) -> str:
    """Replace anything that looks like a secret key with its redacted form."""
    from .protocol.errors import redact_key

    return _KEY_SHAPED.sub(lambda m: redact_key(m.group(0)), text)


class RatePilotError(Exception):
    """Base class of every error ratepilot raises itself."""

    def __init__(self, message: str) -> None:
        self.message = _scrub(message)
        super().__init__(self.message)


class QuotaExhausted(RatePilotError):
    """The account is out of credit or over a spend limit (``insufficient_quota`` and the billing codes).

    Never retried: retrying cannot succeed until someone changes the plan or adds credit.
    """

    def __init__(
        self,
        code: str,
        *,
        server_message: str = "",
        status: int = 429,
        request_id: str | None = None,
        model: str | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.request_id = request_id
        self.model = model
        self.server_message = _scrub(server_message)
        where = f" (model {model})" if model else ""
        rid = f" [request {request_id}]" if request_id else ""
        super().__init__(
            f"OpenAI refused the request with {status} {code}{where}: the account's quota or spend limit is "
            "exhausted. Check your plan and billing details (https://platform.openai.com/settings/organization/"
            f"billing) - retrying will not help until credit is added or the limit is raised.{rid}"
        )


class BudgetExceeded(RatePilotError):
    """Sending the next request could cross the ``budget_usd`` given to the Pilot; nothing was sent."""

    def __init__(self, *, budget_usd: float, spent_usd: float, worst_case_usd: float, model: str | None) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.worst_case_usd = worst_case_usd
        self.model = model
        super().__init__(
            f"Budget of ${budget_usd:.4f} would be exceeded: ${spent_usd:.6f} spent so far (in-flight requests "
            "counted at their worst case), and the next request"
            f"{f' to {model}' if model else ''} may cost up to ${worst_case_usd:.6f}. Nothing was sent. Raise "
            "budget_usd (or --budget-usd) to continue."
        )


class RequestTooLarge(RatePilotError):
    """One request needs more tokens than the per-minute token limit allows: it can never be admitted."""

    def __init__(self, *, model: str | None, limit: int | None, requested: int, server_message: str = "") -> None:
        self.model = model
        self.limit = limit
        self.requested = requested
        self.server_message = _scrub(server_message)
        lim = f"the limit of {limit} tokens per minute" if limit is not None else "the token limit"
        super().__init__(
            f"Request too large for {model or 'this model'}: it needs {requested} tokens, more than {lim}. "
            "Reduce the input or max_tokens (or split the request); retrying cannot help."
        )


class RetriesExhausted(RatePilotError):
    """A retryable failure persisted past the retry policy's caps (attempts or total wait).

    ``last_status`` / ``last_code`` / ``last_info`` (the classified body) describe the final failed response
    (``None`` for a connection error or timeout); the final exception, if any, is ``last_error`` and also the
    ``__cause__``.
    """

    def __init__(
        self,
        *,
        attempts: int,
        reason: str,
        last_status: int | None = None,
        last_code: str | None = None,
        last_message: str = "",
        last_error: BaseException | None = None,
        last_info: ErrorInfo | None = None,
    ) -> None:
        self.attempts = attempts
        if last_info is not None:
            import dataclasses

            last_info = dataclasses.replace(last_info, message=_scrub(last_info.message))
        self.last_info = last_info
        self.reason = reason
        self.last_status = last_status
        self.last_code = last_code
        self.last_message = _scrub(last_message)
        self.last_error = last_error
        if last_status is not None:
            what = f"HTTP {last_status}{f' {last_code}' if last_code else ''}"
            if self.last_message:
                what += f": {self.last_message}"
        elif last_error is not None:
            what = type(last_error).__name__
        else:
            what = "unknown error"
        super().__init__(f"Gave up after {attempts} attempt(s) ({reason}); last error: {what}")


class InputError(RatePilotError):
    """Bad user input (a requests JSONL line, a flag): names the line and field; nothing was sent."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        self.line = line
        self.field = field
        where = []
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field {field!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}")


class AuthFailed(RatePilotError):
    """401/403: the key is wrong for every request, not this one. A job stops; nothing is recorded."""


class TransientFailure(RatePilotError):
    """No answer after every retry (connection, timeout, 5xx, 429): not recorded; a rerun asks again."""


def unwrap_pilot_error(exc: BaseException) -> RatePilotError | None:
    """The RatePilotError behind an exception, if any (the SDK may wrap the transport's errors in its own)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, RatePilotError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class StoreUnavailable(RatePilotError):
    """The limiter's shared store (Redis, SQLite) did not answer in time or refused the connection.

    A run stops at once (exit 11) rather than waiting out one timeout per request: the limits it would enforce
    are shared with other processes, so going on without them is not safe unless asked for.
    """
