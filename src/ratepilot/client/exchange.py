"""One logical request across all its attempts: the decisions, shared by the sync and async drivers.

The drivers in :mod:`ratepilot.client.transport` do only I/O — acquire from the limiter, send, read, sleep —
and hand every outcome to an :class:`Exchange`, which observes headers, settles the limiter, fills the
ledger and the budget, classifies errors and asks the retry policy what to do next. It answers with a
:class:`Step`: deliver the response, wait and retry, or fail with a typed error.

The limiter's state is an estimate: when its store fails after a request was sent (Redis down, SQLite busy),
the failure is logged and the response still delivered — the server has answered, and has been paid.

The typed errors it fails with are also the SDK's own exceptions when the SDK is loaded (a client of it is
what is calling): see :mod:`ratepilot.client.sdk_errors`.

Over 500 lines, one concept: one request's life across its attempts (its decisions only; the drivers are in
:mod:`.transport`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import QuotaExhausted, RequestTooLarge, RetriesExhausted
from ..limits.learning import refusal_evidence
from ..limits.types import Cost, CostTooLarge, Grant, Priority, Scope
from ..protocol.errors import ErrorClass, ErrorInfo, LimitKind, classify, error_body, headers_in_message
from ..protocol.headers import RateLimitHeaders
from ..protocol.pricing import answered_tier
from ..protocol.usage import usage_from_body
from ..retry import FailureKind, GiveUp, RetryState
from . import wire
from .budget import Reservation
from .plan import RequestPlan, Usage, parse_json

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = ["ATTEMPTS_HEADER", "WAITED_HEADER", "Deliver", "Exchange", "Fail", "Reraise", "RetryAfter", "Step"]

log = logging.getLogger("ratepilot.client")

_LIMIT_REQUESTED = re.compile(r"Limit (\d+), Requested (\d+)")
_LONG_WAIT_S = 60.0  # a refusal wait at least this long is logged as a warning (a daily limit, say)
_TOKEN_DIMENSIONS = ("tpm", "tpd", "ptpm")
# Polls of runs, batches and background responses: small JSON objects whose usage the ledger records once
# they finish.
_ACCOUNTED_POLLS = ("/runs/", "/batches/", "/responses/")

ATTEMPTS_HEADER = "x-ratepilot-attempts"
WAITED_HEADER = "x-ratepilot-waited-ms"


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand the response to the SDK (success, or an error the SDK should raise as its own type)."""


@dataclass(frozen=True, slots=True)
class RetryAfter:
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


Step = Deliver | RetryAfter | Fail | Reraise


class Exchange:
    """Created by :meth:`Pilot._begin` after the pre-send checks passed (budget).

    ``lib`` is the HTTP library of the wrapped client (httpx2, or legacy httpx).
    """

    def __init__(
        self,
        core: ClientCore,
        plan: RequestPlan,
        scope: Scope,
        priority: Priority,
        reservation: Reservation | None,
        worst_case_usd: float,
        lib: Any,
        retry_faults: bool = True,
    ) -> None:
        self.core = core
        self.plan = plan
        self.scope = scope
        self.retry_faults = retry_faults  # False: sent at most once, whatever fault (see RETRY_HEADER)
        self.cost = Cost(requests=1, tokens=plan.tokens)
        self.priority = priority
        self.reservation = reservation
        self.worst_case_usd = worst_case_usd
        self.lib = lib
        self.attempt = 0
        self.retry_waited = 0.0  # waits after faults (what the retry policy's total-wait cap counts)
        self.refusals = 0  # attempts refused for a rate limit (they never count toward the attempt cap)
        self.refusal_waited = 0.0  # waits after those refusals (what the retry policy's patience counts)
        self._refused = False  # the wait being made follows a refusal
        self.total_waited = 0.0  # plus waits for the limiter
        self.grant: Grant | None = None  # the current attempt's reservation
        self.sent = False  # the current attempt was handed to the inner transport: the server may count it
        self.sent_at = 0.0
        self.body: Any = None  # the current response's body, parsed once (None: not read, or not JSON)
        self.host = ""  # scheme://host:port of the server, set by on_request
        self.request: Any = None  # the request being sent, set by on_request (typed errors carry a key-free copy)
        self._closed = False

    # -- per attempt: before sending ----------------------------------------------------------------------------

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Around ``limiter.acquire``/``aacquire``: counts the wait; a cost the server can never admit raises
        :class:`~ratepilot.errors.RequestTooLarge` (the limiter knows the server's limit once it has seen it)."""
        clock = self.core.clock
        t0 = clock.now()
        self.grant, self.sent, self.body = None, False, None
        try:
            yield
        except CostTooLarge:
            raise self._too_large() from None
        waited = clock.now() - t0
        self.waited(waited)
        if self.refusals:  # waiting for capacity after a refusal: what patience bounds, with the retry sleeps
            self.refusal_waited += waited

    def _too_large(self) -> RequestTooLarge:
        view = self.core.limiter_view(self.scope)
        limits = [
            v.server_limit
            for name in _TOKEN_DIMENSIONS
            if (v := view.get(name)) is not None and v.server_limit and v.server_limit < self.cost.tokens
        ]
        limit = min(limits) if limits else None
        fields: dict[str, Any] = {"model": self.plan.model, "limit": limit, "requested": self.cost.tokens}
        sdk = _sdk_errors()
        if sdk is None or self.request is None:
            return RequestTooLarge(**fields)
        # Nothing was sent. The SDK alone would have sent it and got the server's 429 "Request too large": raise
        # what it would have raised, around that answer built here (marked local), so except clauses agree.
        body = _too_large_body(self.plan.model, limit, self.cost.tokens)
        raw = json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        response = sdk.sdk_response(self.lib, self.request, 429, headers, raw, local=True)
        native: RequestTooLarge = sdk.RequestTooLarge(response=response, body=body["error"], **fields)
        return native

    def on_request(self, request: Any) -> None:
        """The request this exchange sends (its server is what connection failures are judged against)."""
        url = request.url
        self.host = f"{url.scheme}://{url.host}:{url.port or ''}"
        self.request = request

    def sending(self, grant: Grant) -> None:
        """``grant`` was acquired and the request is about to be handed to the inner transport."""
        self.grant, self.sent, self.sent_at = grant, True, self.core.clock.now()
        self.attempt += 1
        self.core.ledger.count(requests=1, retries=1 if self.attempt > 1 else 0)

    def waited(self, seconds: float, *, retry: bool = False) -> None:
        self.core.ledger.waited(seconds)
        self.total_waited += max(0.0, seconds)
        if retry and self._refused:
            self.refusal_waited += seconds
        elif retry:
            self.retry_waited += seconds

    # -- per attempt: the outcome -------------------------------------------------------------------------------

    def wants_body(self, request: Any, response: Any) -> bool:
        """Should the body be read by the driver (errors, JSON generations, polls) rather than streamed through?"""
        headers = response.headers
        if response.status_code >= 400:
            return True
        if wire.is_sse(headers):
            return False
        if self.plan.generation:
            return True
        path = request.url.path
        return request.method == "GET" and wire.is_json(headers) and any(p in path for p in _ACCOUNTED_POLLS)

    def on_response(self, request: Any, response: Any, raw: bytes | None) -> tuple[Step, Any]:
        """An HTTP response (``raw``: its body when :meth:`wants_body` said to read it). Returns the step and the
        response to deliver (rebuilt around ``raw``, or with a settling stream)."""
        lib = self.lib
        if self.host not in self.core.answered_hosts:
            self.core.answered_hosts.add(self.host)  # this server answers: later connection failures are transient
        if raw is not None:
            self.body = parse_json(wire.decoded(lib, response.headers, raw) or b"")
            response = wire.rebuilt(lib, response, request, raw)
        elif self.plan.generation:  # a streamed generation: settled from its usage chunk when it ends
            response.stream = wire.settling_stream(lib, response.stream, self.finish_stream)
        status = response.status_code
        if status >= 400:
            return self._on_error(request, response, raw), response
        return self._on_success(response.headers, raw), response

    def _on_success(self, headers: Mapping[str, str], raw: bytes | None) -> Step:
        grant = self._grant()
        if self.plan.generation and raw is None:
            # A streamed generation: its wrapper calls finish_stream() when it ends; learn from the headers now.
            self._observe(headers, answered=True)
            return Deliver()
        if self.plan.generation:
            usage = usage_from_body(self.body)
            if usage is None and self.plan.background:
                # A background response is billed when it completes: the poll that first sees it completed
                # records its usage (ClientCore.account_object). Until then keep the admission charge.
                self._settle(grant, None)
                self._close_budget(0.0)
            else:
                self._finish(usage)
                if self.plan.path.rstrip("/").endswith("/responses"):
                    self.core.mark_accounted(self.body)  # a later GET of this response must not count it again
        elif not self.plan.generation:
            self._settle(grant, 0)
            self._close_budget(0.0)
            if self.body is not None:
                self.core.account_object(self.body)
        # Settle first, then observe: the server's headers already include this request's actual usage (it
        # settles before answering), so a pending refund must not hide other clients' traffic. Against a
        # server that reports at admission this order errs the safe way (a refund looks like foreign use).
        self._observe(headers, answered=True)
        return Deliver()

    def _on_error(self, request: Any, response: Any, raw: bytes | None) -> Step:
        # A refused or failed request used no tokens; its request was counted by the server (and by us).
        # Settled before observing, for the reason given in _on_success.
        status, headers = response.status_code, response.headers
        grant = self._grant()
        self._settle(grant, 0)
        info = classify(status, self.body, headers)
        refused = info.error_class is ErrorClass.RATE_LIMITED
        # A 429 without headers still names its bucket's limit and use in words: learn from those.
        seen = RateLimitHeaders.parse(headers)
        if refused:
            seen = seen.or_else(headers_in_message(info.message))
        self._observe(seen)
        self._refused = refused
        if refused:
            self.refusals += 1
            self.core.ledger.count(rate_limited=1)
        else:
            self.core.ledger.count(errors=1)
        decision = self.core.retry.decide(
            RetryState(
                self.attempt,
                FailureKind.RESPONSE,
                self.retry_waited,
                info,
                headers,
                refusals=self.refusals,
                refusal_waited=self.refusal_waited,
                retry_faults=self.retry_faults,
            )
        )
        if not isinstance(decision, GiveUp):
            if refused:
                # Everyone sharing this scope holds back, not just this request; and the limiter learns from it.
                self._learn_refusal(grant, info, seen, decision.after)
                if decision.after >= _LONG_WAIT_S:
                    log.warning(
                        "ratepilot: %s for %s: waiting %.0fs for capacity (the request is kept, not dropped)",
                        info.code or "rate limited",
                        self.plan.model or self.plan.path,
                        decision.after,
                    )
            self._log_retry(decision.reason, decision.after)
            return RetryAfter(decision.after)
        self._close_budget(0.0)
        return self._give_up(info, decision, headers, _Answer(request, response, raw))

    def _learn_refusal(self, grant: Grant, info: ErrorInfo, headers: RateLimitHeaders, wait: float) -> None:
        """Tell the limiter: block the scope for ``wait``, and learn a shorter window or a slower pace.

        The refusal is evidence of a window shorter than the minute only where the headers cannot explain it:
        the refusing dimension's headers (or, without them, the message's numbers) showed room for this request,
        or were missing.
        """
        limiter = self.core.limiter
        slow_down = info.code == "slow_down"
        evidence = None if slow_down else refusal_evidence(info.message, info.type, headers, self.cost.tokens)
        refused = getattr(limiter, "refused", None)
        if refused is None:  # a limiter written to the older interface: block only
            self._guarded("penalize", limiter.penalize, self.scope, wait)
            return
        self._guarded("refused", refused, grant, wait, evidence=evidence, slow_down=slow_down)

    def on_exception(self, exc: Exception) -> Step:
        """The inner transport (or reading the body) raised. Only timeouts and connection errors are retried;
        anything else is re-raised unchanged (the driver's abort then settles the attempt)."""
        kind = wire.failure_kind(self.lib, exc)
        if kind is None:
            return Reraise()
        # The request may have reached the server (a read timeout): keep its reservation as charged.
        self._settle(self._grant(), None, headers_follow=False)
        self.core.ledger.count(errors=1)
        if kind is FailureKind.TIMEOUT:
            # Time spent waiting for an answer that never came is spent like a backoff: the retry policy's
            # max_total_wait counts it, so a server that never answers cannot hold a request for attempts x timeout.
            self.retry_waited += max(0.0, self.core.clock.now() - self.sent_at)
        self._refused = False
        decision = self.core.retry.decide(
            RetryState(
                self.attempt,
                kind,
                self.retry_waited,
                refusals=self.refusals,
                refusal_waited=self.refusal_waited,
                answered_before=self.host in self.core.answered_hosts,
                retry_faults=self.retry_faults,
            )
        )
        if not isinstance(decision, GiveUp):
            self._log_retry(decision.reason, decision.after)
            return RetryAfter(decision.after)
        self._close_budget(0.0)
        if decision.exhausted:
            fields: dict[str, Any] = {"attempts": self.attempt, "reason": decision.reason, "last_error": exc}
            sdk = _sdk_errors()
            if sdk is None or self.request is None:
                return Fail(RetriesExhausted(**fields), exc)
            request = wire.key_free_request(self.lib, self.request)
            return Fail(sdk.retries_exhausted(request=request, timeout=kind is FailureKind.TIMEOUT, **fields), exc)
        return Reraise()

    def annotated(self, response: Any) -> Any:
        """Tell raw-response users what ratepilot did (the SDK's own ``retries_taken`` is always 0 now)."""
        response.headers[ATTEMPTS_HEADER] = str(self.attempt)
        response.headers[WAITED_HEADER] = str(round(self.total_waited * 1000))
        return response

    def abort(self) -> None:
        """The attempt ended in something that is not an HTTP outcome (cancellation, a bug).

        Before sending, the reservation is given back. Once sent, the server may have counted the request (and
        billed it): the limiter keeps the reservation and the budget is charged the worst case.
        """
        grant = self.grant
        if grant is not None and not grant.done:
            if self.sent:
                self._settle(grant, None, headers_follow=False)
            else:
                self._guarded("cancel", self.core.limiter.cancel, grant)
        self._close_budget(self.worst_case_usd if self.sent else 0.0)

    # -- settling -------------------------------------------------------------------------------------------------

    def finish_stream(self, usage: Usage | None, *, complete: bool) -> None:
        """A streamed response ended (``complete``), or was closed or dropped before its end."""
        if usage is None and not complete:
            # Abandoned: what the server generated (and bills) is unknown. Keep the admission charge in the
            # limiter and charge the budget the worst case, as for a stream that reports no usage.
            self._settle(self._grant(), None)
            self.core.ledger.record_unmetered(self.plan.model or "")
            log.info("ratepilot: a streamed %s call was closed before its end; settled at its estimate", self.plan.path)
            self._close_budget(self.worst_case_usd)
            return
        self._finish(usage)

    def _finish(self, usage: Usage | None) -> None:
        """Settle a generation call with the tokens it used (or the estimate when the server reported none)."""
        model = self.plan.model or ""
        grant = self._grant()
        if usage is None:
            # A stream without stream_options.include_usage reports no usage: keep the admission charge in the
            # limiter, and charge the budget its worst case, since the true cost cannot be known.
            self._settle(grant, None)
            self.core.ledger.record_unmetered(model)
            log.warning(
                "ratepilot: no usage reported for a %s call to %s; the ledger cannot price it "
                "(pass stream_options={'include_usage': True} to streamed calls)",
                self.plan.path,
                model,
            )
            self._close_budget(self.worst_case_usd)
            return
        self._settle(grant, usage.total if self.core.settle_to_usage else None)
        # Billed by the tier that served it, as the response says (flex at the Batch price), not the one asked.
        cost = self.core.ledger.record(model, usage, tier=answered_tier(self.body))
        self._close_budget(cost)

    def _grant(self) -> Grant:
        assert self.grant is not None, "settling an attempt that was never admitted"
        return self.grant

    def _observe(self, headers: Mapping[str, str] | RateLimitHeaders, *, answered: bool = False) -> None:
        parsed = headers if isinstance(headers, RateLimitHeaders) else RateLimitHeaders.parse(headers)
        if not parsed.empty:
            self.core.remember(self.scope, parsed)
        # The keyword only when it says something: a limiter written to the older interface keeps working.
        extra = {"answered": True} if answered else {}
        self._guarded("observe", self.core.limiter.observe, self.scope, parsed, self.sent_at, grant=self.grant, **extra)

    def _settle(self, grant: Grant, actual_tokens: int | None, *, headers_follow: bool = True) -> None:
        # The keyword only when it says something: a limiter written to the older interface keeps working.
        extra = {} if headers_follow else {"headers_follow": False}
        self._guarded("settle", self.core.limiter.settle, grant, actual_tokens, **extra)

    def _guarded(self, what: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """A limiter-store call after sending: its failure must not fail a response the server already gave."""
        try:
            call(*args, **kwargs)
        except Exception as exc:
            # Scopes carry a hash of the key, never the key; the message names the operation and the model only.
            log.warning(
                "ratepilot: limiter %s failed for %s (%s: %s); continuing without it",
                what,
                self.scope.model,
                type(exc).__name__,
                exc,
            )

    def _close_budget(self, actual_usd: float) -> None:
        if self._closed:
            return
        self._closed = True
        budget = self.core.budget
        if budget is None:
            return
        if self.reservation is None and actual_usd <= 0:
            return
        budget.commit(self.reservation, actual_usd if math.isfinite(actual_usd) else 0.0)

    # -- giving up ------------------------------------------------------------------------------------------------

    def _log_retry(self, reason: str, after: float) -> None:
        log.info("ratepilot: %s on %s (attempt %d): retrying in %.3fs", reason, self.plan.path, self.attempt, after)

    def _give_up(self, info: ErrorInfo, decision: GiveUp, headers: Mapping[str, str], answer: _Answer) -> Step:
        request_id = headers.get("x-request-id")
        sdk = _sdk_errors()

        def native() -> dict[str, Any]:
            # With the SDK loaded, each typed error is also the exception the SDK would raise for this answer,
            # holding it (and a key-free copy of the request), so `except openai.RateLimitError` still works.
            return {} if sdk is None else answer.sdk_fields(sdk, self.lib, self.body)

        if info.error_class is ErrorClass.QUOTA:
            quota = QuotaExhausted if sdk is None else sdk.QuotaExhausted
            return Fail(
                quota(
                    info.code or info.type or "insufficient_quota",
                    server_message=info.message,
                    status=info.status,
                    request_id=request_id,
                    model=self.plan.model,
                    **native(),
                )
            )
        if info.error_class is ErrorClass.TOO_LARGE:
            m = _LIMIT_REQUESTED.search(info.message)
            too_large = RequestTooLarge if sdk is None else sdk.RequestTooLarge
            return Fail(
                too_large(
                    model=self.plan.model,
                    limit=int(m.group(1)) if m else None,
                    requested=int(m.group(2)) if m else self.cost.tokens,
                    server_message=info.message,
                    **native(),
                )
            )
        if decision.exhausted:
            exhausted = RetriesExhausted if sdk is None else sdk.retries_exhausted
            return Fail(
                exhausted(
                    attempts=self.attempt,
                    reason=decision.reason,
                    last_status=info.status,
                    last_code=info.code,
                    last_message=info.message,
                    last_info=info,
                    **native(),
                )
            )
        return Deliver()  # 400/401/403/404...: the SDK raises its own, familiar exception type


@dataclass(frozen=True, slots=True)
class _Answer:
    """The failed answer a typed error is about: what its SDK-native form carries."""

    request: Any
    response: Any
    raw: bytes | None

    def sdk_fields(self, sdk: ModuleType, lib: Any, parsed: object) -> dict[str, Any]:
        response = self.response
        raw = self.raw if self.raw is not None else b""
        copy = sdk.sdk_response(lib, self.request, response.status_code, response.headers, raw)
        return {"response": copy, "body": sdk.sdk_body(parsed, raw)}


def _sdk_errors() -> ModuleType | None:
    """:mod:`ratepilot.client.sdk_errors` when the SDK is loaded (a client of it is what is calling), else None: a
    plain httpx2 caller (the online runner's sender) gets the plain typed errors, without loading the SDK."""
    if "openai" not in sys.modules:
        return None
    from . import sdk_errors

    return sdk_errors


def _too_large_body(model: str | None, limit: int | None, requested: int) -> dict[str, Any]:
    """The server's "Request too large" body (its organization unknown here), for one refused before sending."""
    kind = LimitKind.TPM
    numbers = f"Limit {limit}, Requested {requested}" if limit is not None else f"Requested {requested}"
    message = (
        f"Request too large for {model or 'this model'} on {kind.phrase}: {numbers}. The input or output tokens "
        "must be reduced in order to run successfully. (Refused by ratepilot before sending: the server's limit "
        "is known.)"
    )
    return error_body(message, kind.error_type, "rate_limit_exceeded")
