"""The Pilot: one limiter, retry policy, budget, price table and clock, shared by every client it wraps.

``client = pilot.wrap(OpenAI())`` returns a real SDK client (``max_retries=0``: nothing retries twice) whose
``http_client`` carries ratepilot's transport around the original one, so every call — completions,
embeddings, files, batches, and above all the polls that quietly burn the request budget — is throttled,
retried, classified and accounted.
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2

from ..clock import Clock, SystemClock
from ..limits.types import DimensionView, Priority, Scope, key_id_for
from ..protocol.headers import DimensionState
from ..protocol.pricing import PriceTable
from ..protocol.tokens import TOKEN_ESTIMATES
from ..retry import RetryPolicy
from . import display
from .budget import Budget, BudgetAlert
from .core import ClientCore
from .exchange import Exchange
from .ledger import UsageLedger, UsageReport
from .passthrough import PassThroughLimiter
from .plan import PRIORITY_HEADER, RETRY_HEADER, RequestPlan, plan_request, prompt_estimate
from .transport import async_transport_class, sync_transport_class

__all__ = ["LimitState", "Pilot"]

log = logging.getLogger("ratepilot.client")

ClientT = TypeVar("ClientT")

ANONYMOUS_KEY_ID = "anonymous"


def _api_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return headers.get("api-key") or None  # Azure


def _priority(value: str | None) -> Priority:
    if not value:
        return Priority.NORMAL
    try:
        return Priority[value.strip().upper()]
    except KeyError:
        log.warning("ratepilot: unknown %s value %r; using normal", PRIORITY_HEADER, value)
        return Priority.NORMAL


def _make_limiter(store: str, clock: Clock, ceiling: Any, safety_margin: float) -> Any:
    try:
        from ..limits import Limiter
    except ImportError:
        log.warning("ratepilot: no limiter available; requests are retried but not throttled")
        return PassThroughLimiter()
    return Limiter(store=store, clock=clock, ceiling=ceiling, safety_margin=safety_margin)


@dataclass(frozen=True, slots=True)
class LimitState:
    """The live rate-limit state of one (key, model) scope, per dimension.

    ``server``: what the server last said, in its headers or a header-less 429's words (``requests``, ``tokens``,
    ``project_tokens``; each family the latest value it was given, dated with the latest response), refilled at
    the reported rate to now — exact for a continuously refilling bucket with no other traffic.
    ``limiter``: the limiter's own view (it also counts reservations in flight), per dimension
    (``rpm``, ``tpm``, ``rpd``, ``tpd``, ``ptpm``); empty before the first response.

    The fields keep full precision; ``repr()``, rich's pretty printer and ``to_dict()`` show rounded figures
    (whole units left, milliseconds), and ``str()`` a small table for people.
    """

    model: str
    key_id: str
    observed_ago: float | None  # seconds since the last headers for this scope (None: none seen yet)
    server: dict[str, DimensionState] = field(default_factory=dict)
    limiter: dict[str, DimensionView] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For JSON: ``remaining`` in whole units available now, seconds to the millisecond."""
        return {
            "model": self.model,
            "key_id": self.key_id,
            "observed_ago": None if self.observed_ago is None else display.seconds(self.observed_ago),
            "server": {
                k: {"limit": v.limit, "remaining": v.remaining, "reset_s": display.seconds(v.reset)}
                for k, v in self.server.items()
            },
            "limiter": {
                k: {
                    "limit": display.units(v.limit),
                    "server_limit": v.server_limit,
                    "remaining": display.units_left(v.remaining),
                    "reset_s": display.seconds(v.reset),
                    "window_s": display.units(v.window),
                }
                for k, v in self.limiter.items()
            },
        }

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        yield from self.to_dict().items()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"LimitState({fields})"

    def __str__(self) -> str:
        from ..protocol.headers import format_duration

        if not self.server and not self.limiter:
            return f"{self.model}: no rate-limit headers seen yet"
        ago = "" if self.observed_ago is None else f", headers from {format_duration(self.observed_ago)} ago"
        lines = [f"{self.model} (key {self.key_id}){ago}"]
        rows = [
            (name.replace("_", " "), f"{dim.remaining:,}", f"{dim.limit:,}", dim.reset)
            for name, dim in self.server.items()
        ] or [
            (name, f"{display.units_left(v.remaining):,}", f"{display.units(v.limit):,}", v.reset)
            for name, v in self.limiter.items()
        ]
        left = max(len(r[1]) for r in rows)
        limit = max(len(r[2]) for r in rows)
        label = max(len(r[0]) for r in rows)
        for name, remaining, cap, reset in rows:
            lines.append(
                f"  {name:<{label}}  {remaining:>{left}} left of {cap:<{limit}}  full in {format_duration(reset)}"
            )
        return "\n".join(lines)


def _refilled(dim: DimensionState, elapsed: float) -> DimensionState:
    if dim.reset <= 0 or elapsed <= 0:
        return dim if elapsed <= 0 else DimensionState(dim.limit, dim.limit, 0.0)
    rate = (dim.limit - dim.remaining) / dim.reset  # units per second the bucket refills at
    remaining = min(dim.limit, int(dim.remaining + elapsed * rate))
    return DimensionState(dim.limit, remaining, max(0.0, dim.reset - elapsed))


class Pilot:
    """Shared rate-limit state, retry policy, budget and ledger for any number of wrapped clients.

    * ``store``: the limiter store URI — ``memory://`` (one process), ``sqlite:///path`` (processes on one
      host), ``redis://host:port/db`` (many hosts);
    * ``budget_spent_usd``: already spent against ``budget_usd`` (a resumed job's earlier runs);
    * ``budget_usd``: refuse (raise :class:`~ratepilot.errors.BudgetExceeded`) any request whose worst-case
      cost would cross it; ``on_budget_alert`` is called at 50/80/100%;
    * ``clock``: injected time (tests pass a ``FakeClock`` shared with the simulator);
    * ``retry``: a :class:`~ratepilot.retry.RetryPolicy`; ``prices``: a
      :class:`~ratepilot.protocol.pricing.PriceTable`;
    * ``assume_output_tokens``: the output assumed for the budget's worst case when a request sets no
      ``max_tokens``;
    * ``limiter``: an already built limiter (overrides ``store``/``ceiling``/``safety_margin``);
    * ``pools``: model -> pool name, for model families that share one set of limits on the server (their
      calls then share one limiter scope). Calls that name no model use the ``"requests"`` scope;
    * ``settle_to_usage``: after a response, correct the limiter's token charge from the admission estimate to
      the reported usage (what the simulator does by default). ``False`` keeps the admission charge, for a
      server that does not refund the difference (the real API's behaviour here is not documented);
    * ``token_estimate``: what the limiter reserves per request — ``"server"`` (default) mirrors the server's
      admission rule; ``"tokenizer"`` reserves the real prompt tokens plus the output cap, for a server whose
      rule is not known (see :func:`ratepilot.protocol.tokens.reservation_tokens`).
    """

    def __init__(
        self,
        store: str = "memory://",
        budget_usd: float | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        *,
        limiter: Any = None,
        ceiling: Any = None,
        safety_margin: float = 0.0,
        on_budget_alert: Callable[[BudgetAlert], None] | None = None,
        assume_output_tokens: int = 1024,
        pools: Mapping[str, str] | None = None,
        settle_to_usage: bool = True,
        token_estimate: str = "server",
        budget_spent_usd: float = 0.0,
    ) -> None:
        if token_estimate not in TOKEN_ESTIMATES:
            raise ValueError(f"token_estimate must be one of {', '.join(TOKEN_ESTIMATES)}, got {token_estimate!r}")
        clock = clock or SystemClock()
        self.prices = prices or PriceTable()
        # What every exchange works with (the Pilot only assembles it, and plans each request: _begin).
        self.core = ClientCore(
            limiter=limiter if limiter is not None else _make_limiter(store, clock, ceiling, safety_margin),
            retry=retry or RetryPolicy(),
            ledger=UsageLedger(self.prices),
            budget=Budget(budget_usd, on_alert=on_budget_alert, spent_usd=budget_spent_usd)
            if budget_usd is not None
            else None,
            clock=clock,
            settle_to_usage=settle_to_usage,
        )
        self.assume_output_tokens = assume_output_tokens
        self.pools: dict[str, str] = dict(pools or {})
        self.token_estimate = token_estimate
        # sha256 of the key once per key, not once per request (kept in memory only, like the SDK keeps it)
        self._key_id = functools.lru_cache(maxsize=64)(key_id_for)

    # -- the core's parts, as attributes of the Pilot (settable: a Ray actor swaps in a shared budget) ------------

    @property
    def clock(self) -> Clock:
        return self.core.clock

    @property
    def retry(self) -> RetryPolicy:
        return self.core.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self.core.retry = policy

    @property
    def ledger(self) -> UsageLedger:
        return self.core.ledger

    @property
    def budget(self) -> Budget | None:
        return self.core.budget

    @budget.setter
    def budget(self, budget: Budget | None) -> None:
        self.core.budget = budget

    @property
    def limiter(self) -> Any:
        return self.core.limiter

    @property
    def settle_to_usage(self) -> bool:
        return self.core.settle_to_usage

    @property
    def answered_hosts(self) -> set[str]:
        return self.core.answered_hosts

    # -- public -----------------------------------------------------------------------------------------------

    def wrap(self, client: ClientT) -> ClientT:
        """A copy of an ``OpenAI``/``AsyncOpenAI`` client whose every call goes through this pilot.

        The SDK's own retries are turned off (``max_retries=0``): ratepilot retries, once, with a policy that
        never retries what cannot succeed. The client's own HTTP client is left as it was.
        """
        http = getattr(client, "_client", None)
        with_options = getattr(client, "with_options", None)
        if http is None or with_options is None:
            raise TypeError(f"pilot.wrap() expects an OpenAI or AsyncOpenAI client, got {type(client).__name__}")
        wrapped: ClientT = with_options(http_client=self._wrap_http_client(http), max_retries=0)
        return wrapped

    def usage(self) -> UsageReport:
        """Requests, retries, 429s, wait time, tokens and cost per model, so far."""
        return self.ledger.snapshot()

    def limits(self, model: str, *, api_key: str | None = None, key_id: str | None = None) -> LimitState:
        """The live state of ``model``'s limits for a key (default: the key most recently seen for it).

        Calls that name no model (polls, files, batches) are charged to the ``"requests"`` scope:
        ``pilot.limits("requests")``.
        """
        if api_key is not None:
            key_id = self._key_id(api_key)
        model = self.pools.get(model, model)
        now = self.clock.now()
        latest = self.core.latest_headers(model, key_id)
        if latest is None:
            scope = Scope(key_id or ANONYMOUS_KEY_ID, model)
            return LimitState(model, scope.key_id, None, {}, self.core.limiter_view(scope))
        seen, scope, headers = latest
        elapsed = now - seen
        server = {
            name: _refilled(dim, elapsed)
            for name, dim in (
                ("requests", headers.requests),
                ("tokens", headers.tokens),
                ("project_tokens", headers.project_tokens),
            )
            if dim is not None
        }
        return LimitState(model, scope.key_id, elapsed, server, self.core.limiter_view(scope))

    def close(self) -> None:
        closer = getattr(self.limiter, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> Pilot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the transport --------------------------------------------------------------------------------

    def _begin(self, method: str, path: str, headers: Any, body: bytes, lib: Any = httpx2) -> Exchange:
        """Plan one request and run the checks that must happen before anything is sent.

        "Too large for the server's limit" is decided by the limiter at admission (it knows the learned limit);
        the budget is checked here.
        """
        priority = _priority(headers.get(PRIORITY_HEADER))
        if PRIORITY_HEADER in headers:
            del headers[PRIORITY_HEADER]
        retry_faults = headers.get(RETRY_HEADER) != "never"
        if RETRY_HEADER in headers:
            del headers[RETRY_HEADER]
        key = _api_key(headers)
        scope_key = self._key_id(key) if key else ANONYMOUS_KEY_ID
        plan = plan_request(method, path, headers.get("content-type"), body, self.token_estimate)
        scope = Scope(scope_key, self.pools.get(plan.scope_model, plan.scope_model))
        reservation, worst = None, 0.0
        if self.budget is not None and plan.generation:
            worst = self._worst_case_usd(plan)
            reservation = self.budget.reserve(worst, plan.model)
        return Exchange(self.core, plan, scope, priority, reservation, worst, lib, retry_faults)

    def _worst_case_usd(self, plan: RequestPlan) -> float:
        """The prompt as the admission cost estimated it (no tokenizer pass per request) + the maximum output."""
        assert plan.model is not None
        output = plan.max_output or self.assume_output_tokens
        if "embeddings" in plan.path:
            output = 0
        return self.prices.cost(plan.model, prompt_estimate(plan), output)

    def _wrap_http_client(self, http: Any) -> Any:
        """A new HTTP client like ``http`` whose transports are wrapped by this pilot."""
        lib = _http_library(http)
        asynchronous = isinstance(http, lib.AsyncClient)
        make = (async_transport_class if asynchronous else sync_transport_class)(lib)
        sdk_owned = type(http).__name__ in ("SyncHttpxClientWrapper", "AsyncHttpxClientWrapper")
        if sdk_owned:
            # The SDK made this client and closes it when the original OpenAI object is garbage-collected, so
            # its connection pool cannot be shared: build the same default client around a fresh pool.
            from openai import DEFAULT_CONNECTION_LIMITS

            inner = (
                httpx2.AsyncHTTPTransport(limits=DEFAULT_CONNECTION_LIMITS)
                if asynchronous
                else httpx2.HTTPTransport(limits=DEFAULT_CONNECTION_LIMITS)
            )
            return type(http)(base_url=http.base_url, timeout=http.timeout, transport=make(self, inner))
        # A client the user built (proxies, mounts, auth, a mock transport): copy it, keep its settings and
        # transports, wrap each transport. The user's own client is left untouched.
        clone = copy.copy(http)
        clone._transport = make(self, _unwrapped(http._transport))
        clone._mounts = {
            pattern: (make(self, _unwrapped(t)) if t is not None else None) for pattern, t in http._mounts.items()
        }
        return clone


def _unwrapped(transport: Any) -> Any:
    """Never wrap twice: re-wrapping an already wrapped client replaces the old pilot."""
    inner = getattr(transport, "inner", None)
    return inner if inner is not None and hasattr(transport, "pilot") else transport


def _http_library(http: Any) -> Any:
    if isinstance(http, httpx2.Client | httpx2.AsyncClient):
        return httpx2
    legacy = sys.modules.get("httpx")
    if legacy is not None and isinstance(http, legacy.Client | legacy.AsyncClient):
        return legacy
    raise TypeError(f"unsupported http client {type(http).__name__}: expected an httpx2 or httpx client")
