"""One logical request across all its attempts: the decisions, shared by the sync and async drivers.

The drivers in :mod:`ratepilot.client.transport` do only I/O — acquire from the limiter, send, read, sleep —
and hand every outcome to an :class:`Exchange`, which observes headers, settles the limiter, fills the
ledger and the budget, classifies errors and asks the retry policy what to do next. It answers with a
:class:`Step`: deliver the response, wait and retry, or fail with a typed error.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import QuotaExhausted, RequestTooLarge, RetriesExhausted
from ..limits.types import Cost, Grant, Priority, Scope
from ..protocol.errors import ErrorClass, ErrorInfo, classify
from ..protocol.headers import RateLimitHeaders
from ..retry import FailureKind, GiveUp, RetryState
from .budget import Reservation
from .plan import RequestPlan, Usage, usage_from_body

if TYPE_CHECKING:
    from .pilot import Pilot

__all__ = ["Deliver", "Exchange", "Fail", "Reraise", "Step", "Wait"]

log = logging.getLogger("ratepilot.client")

_LIMIT_REQUESTED = re.compile(r"Limit (\d+), Requested (\d+)")


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand the response to the SDK (success, or an error the SDK should raise as its own type)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep ``after`` seconds on the Pilot's clock, then acquire and send again."""

    after: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise ``error`` (chained to ``cause`` when there is one)."""

    error: Exception
    cause: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Reraise:
    """Re-raise the transport exception being handled, unchanged."""


Step = Deliver | Wait | Fail | Reraise


class Exchange:
    """Created by :meth:`Pilot._begin` after the pre-send checks passed (budget, request size)."""

    def __init__(
        self,
        pilot: Pilot,
        plan: RequestPlan,
        scope: Scope,
        priority: Priority,
        reservation: Reservation | None,
        worst_case_usd: float,
    ) -> None:
        self.pilot = pilot
        self.plan = plan
        self.scope = scope
        self.cost = Cost(requests=1, tokens=plan.tokens)
        self.priority = priority
        self.reservation = reservation
        self.worst_case_usd = worst_case_usd
        self.attempt = 0
        self.retry_waited = 0.0  # waits between attempts (what the retry policy's total-wait cap counts)
        self.total_waited = 0.0  # plus waits for the limiter
        self._closed = False

    # -- per attempt ------------------------------------------------------------------------------------------

    def sending(self) -> None:
        self.attempt += 1
        self.pilot.ledger.count(requests=1, retries=1 if self.attempt > 1 else 0)

    def waited(self, seconds: float, *, retry: bool = False) -> None:
        self.pilot.ledger.waited(seconds)
        self.total_waited += max(0.0, seconds)
        if retry:
            self.retry_waited += seconds

    def _observe(self, grant: Grant, headers: Mapping[str, str], sent_at: float) -> None:
        parsed = RateLimitHeaders.parse(headers)
        if not parsed.empty:
            self.pilot._remember(self.scope, parsed)
        self.pilot.limiter.observe(self.scope, parsed, sent_at, grant=grant)

    def on_success(self, grant: Grant, headers: Mapping[str, str], sent_at: float, body: bytes | None) -> Step:
        """A 2xx. ``body`` is the decoded JSON body of a non-streamed generation call, else None."""
        self._observe(grant, headers, sent_at)
        if self.plan.generation and body is not None:
            usage = usage_from_body(body)
            if usage is None and self.plan.background:
                # A background response is billed when it completes: the poll that first sees it completed
                # records its usage (Pilot._account_object). Until then keep the admission charge.
                self.pilot.limiter.settle(grant, None)
                self._close_budget(0.0)
            else:
                self.finish(grant, usage)
                if self.plan.path.rstrip("/").endswith("/responses"):
                    self.pilot._mark_accounted(body)  # a later GET of this response must not count it again
        elif not self.plan.generation:
            self.pilot.limiter.settle(grant, 0)
            self._close_budget(0.0)
            if body is not None:
                self.pilot._account_object(body)
        # else: a stream; the driver wraps it and calls finish() when it ends.
        return Deliver()

    def finish(self, grant: Grant, usage: Usage | None) -> None:
        """Settle a generation call with the tokens it used (or the estimate when the server reported none)."""
        model = self.plan.model or ""
        if usage is None:
            # A stream without stream_options.include_usage reports no usage: keep the admission charge in the
            # limiter, and charge the budget its worst case, since the true cost cannot be known.
            self.pilot.limiter.settle(grant, self.cost.tokens)
            self.pilot.ledger.record_unmetered(model)
            log.warning(
                "ratepilot: no usage reported for a %s call to %s; the ledger cannot price it "
                "(pass stream_options={'include_usage': True} to streamed calls)",
                self.plan.path,
                model,
            )
            self._close_budget(self.worst_case_usd)
            return
        self.pilot.limiter.settle(grant, usage.total if self.pilot.settle_to_usage else None)
        cost = self.pilot.ledger.record(model, usage)
        self._close_budget(cost)

    def on_error_response(
        self, grant: Grant, status: int, headers: Mapping[str, str], sent_at: float, body: bytes
    ) -> Step:
        self._observe(grant, headers, sent_at)
        # A refused or failed request used no tokens; its request was counted by the server (and by us).
        self.pilot.limiter.settle(grant, 0)
        try:
            parsed: Any = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            parsed = None
        info = classify(status, parsed, headers)
        if info.error_class is ErrorClass.RATE_LIMITED:
            self.pilot.ledger.count(rate_limited=1)
        else:
            self.pilot.ledger.count(errors=1)
        decision = self.pilot.retry.decide(
            RetryState(self.attempt, FailureKind.RESPONSE, self.retry_waited, info, headers)
        )
        if not isinstance(decision, GiveUp):
            if info.error_class is ErrorClass.RATE_LIMITED:
                # Everyone sharing this scope should hold back, not just this request.
                self.pilot.limiter.penalize(self.scope, decision.after)
            log.info(
                "ratepilot: %s on %s (attempt %d): retrying in %.3fs",
                decision.reason,
                self.plan.path,
                self.attempt,
                decision.after,
            )
            return Wait(decision.after)
        self._close_budget(0.0)
        return self._give_up(info, decision, headers)

    def _give_up(self, info: ErrorInfo, decision: GiveUp, headers: Mapping[str, str]) -> Step:
        request_id = headers.get("x-request-id")
        if info.error_class is ErrorClass.QUOTA:
            return Fail(
                QuotaExhausted(
                    info.code or info.type or "insufficient_quota",
                    server_message=info.message,
                    status=info.status,
                    request_id=request_id,
                    model=self.plan.model,
                )
            )
        if info.error_class is ErrorClass.TOO_LARGE:
            m = _LIMIT_REQUESTED.search(info.message)
            return Fail(
                RequestTooLarge(
                    model=self.plan.model,
                    limit=int(m.group(1)) if m else None,
                    requested=int(m.group(2)) if m else self.cost.tokens,
                    server_message=info.message,
                )
            )
        if decision.exhausted:
            return Fail(
                RetriesExhausted(
                    attempts=self.attempt,
                    reason=decision.reason,
                    last_status=info.status,
                    last_code=info.code,
                    last_message=info.message,
                    last_info=info,
                )
            )
        return Deliver()  # 400/401/403/404...: the SDK raises its own, familiar exception type

    def on_exception(self, grant: Grant, kind: FailureKind, exc: BaseException) -> Step:
        # The request may have reached the server (a read timeout): keep its reservation as charged.
        self.pilot.limiter.settle(grant, self.cost.tokens)
        self.pilot.ledger.count(errors=1)
        decision = self.pilot.retry.decide(RetryState(self.attempt, kind, self.retry_waited))
        if not isinstance(decision, GiveUp):
            log.info(
                "ratepilot: %s on %s (attempt %d): retrying in %.3fs",
                decision.reason,
                self.plan.path,
                self.attempt,
                decision.after,
            )
            return Wait(decision.after)
        self._close_budget(0.0)
        if decision.exhausted:
            return Fail(RetriesExhausted(attempts=self.attempt, reason=decision.reason, last_error=exc), exc)
        return Reraise()

    def abort(self, grant: Grant | None) -> None:
        """The attempt ended in something that is not an HTTP outcome (cancellation, a bug): give all back."""
        if grant is not None and not grant.done:
            self.pilot.limiter.cancel(grant)
        self._close_budget(0.0)

    def _close_budget(self, actual_usd: float) -> None:
        if self._closed:
            return
        self._closed = True
        budget = self.pilot.budget
        if budget is None:
            return
        if self.reservation is None and actual_usd <= 0:
            return
        budget.commit(self.reservation, actual_usd if math.isfinite(actual_usd) else 0.0)
