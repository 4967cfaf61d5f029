"""The simulator's mutable state and the operations every endpoint is built from.

One :class:`SimState` per simulator. The ASGI app (:mod:`ratepilot.sim.app`) and the long-running-object
routes (:mod:`ratepilot.sim.longrun`) use only the methods below; they run on the server's event-loop
thread, while ``Simulator.stats()``/``reset()`` may be called from other threads, hence one lock.

Public surface (stable; used by ``sim.longrun``):

``state.clock``, ``state.config``
    The injected clock (``now()`` drives the buckets, ``wall()`` the timestamps) and the :class:`SimConfig`.
``state.authenticate(request) -> str | Response``
    The organization id of the request's bearer key, or the 401 response to return.
``state.charge(org, model, cost_tokens, endpoint) -> Response | None``
    Count one request (and ``cost_tokens`` tokens) against the org's RPM/TPM/RPD/TPD buckets for ``model``
    (``model=None``: the org-wide bucket GETs use), and against its project's when the current request's key
    belongs to a project with limits (``SimConfig.projects``). ``None`` = admitted; else the 429 response to
    return (rate limit, ``slow_down``, "Request too large", or ``config.quota_error_code`` once the org's
    credit is spent). The rate-limit headers of the bucket charged are added to the response of the current
    request automatically.
``state.execute(endpoint, body, org, *, batch=False, bill=True) -> (status, body_dict)``
    Validation + responder + usage, WITHOUT rate limiting (batch lines use it), for any path of the endpoint
    registry (:mod:`ratepilot.sim.endpoints`); never raises (an unknown path is a 404 body, a body without a
    model a 400). Bills the org (at the batch price with ``batch=True``) unless ``bill=False``.
``state.bill(org, model, usage, batch=False) -> float``
    Add a usage dict (``prompt_tokens``/``completion_tokens`` or ``input_tokens``/``output_tokens``) to the
    org's usage and billed cost; returns the USD billed.
``state.settle(org, model, charged, actual)`` / ``state.complete(org, model, charged, usage, actual)``
    Correct the token buckets to the actual usage (``complete`` also bills); see the README. The project's
    buckets are corrected only within a request (they are found through its context).
``state.stats()`` / ``state.reset()``
    The ``GET /sim/stats`` dict; ``reset`` clears buckets, usage, credit and stats (and the long-running
    objects).
``state.new_id(prefix)``
    A fresh id (``chatcmpl-…``, ``req_…``); reproducible with ``SimConfig(deterministic_ids=True)``.
``state.longrun``
    The long-running objects attached to this state (:class:`LongRunning`, set by ``sim.longrun``), or
    ``None``. The core calls only the protocol's methods and never imports ``sim.longrun``: without it,
    ``background: true`` gets a 400 and ``/sim/stats`` has no ``longrun`` section.

Over 500 lines, one concept: the simulator's per-organization state and the request pipeline's steps over it.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..clock import Clock, SystemClock
from ..protocol.errors import (
    error_body,
    insufficient_quota_error,
    invalid_api_key_error,
    model_not_found_error,
    rate_limit_error,
    redact_key,
    request_too_large_error,
    server_error,
    slow_down_error,
)
from .config import Limits, ModelSpec, SimConfig
from .endpoints import ENDPOINTS, Endpoint
from .enforcement import Enforcer, PoolBuckets
from .validation import ApiError, invalid_url

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["Identity", "LongRunning", "RequestContext", "SimState", "current_request"]

log = logging.getLogger("ratepilot.sim")

ORG_WIDE_POOL = "*"


class LongRunning(Protocol):
    """What the core asks of the long-running objects attached to it (``sim.longrun``'s store).

    The core calls these and nothing else; the long-running side uses the state's public methods (above).
    """

    def advance(self) -> None:
        """Bring every lifecycle to the clock's now (called before every request; cheap when idle)."""
        ...

    def create_background_response(self, org: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /v1/responses`` with ``background: true``, already validated and charged."""
        ...

    def stats(self) -> dict[str, Any]:
        """The ``longrun`` section of ``/sim/stats``."""
        ...

    def reset(self) -> None:
        """Drop every long-running object (``POST /sim/reset``)."""
        ...

    def close(self) -> None:
        """Stop any thread of its own (the simulator is stopping, or another store replaces this one)."""
        ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key belongs to. ``key_label`` is the redacted key (``sk-...abcd``), safe to show."""

    org: str
    project: str | None
    key_label: str


@dataclass(slots=True)
class RequestContext:
    """Per-request facts the response headers are built from (filled in as the request is processed)."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    org: str | None = None
    project: str | None = None
    buckets: PoolBuckets | None = None
    project_buckets: PoolBuckets | None = None  # the project's, when it has limits (SimConfig.projects)
    omit_ratelimit: bool = False
    unknown_tokens: bool = False  # the token headers say -1 (Azure's Responses API has sent that)


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("ratepilot_sim_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


class _Stats:
    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.tiers: Counter[str] = Counter()  # answers per served tier, and flex refusals ("flex_unavailable")
        self.usage: dict[str, dict[str, float]] = {}
        self.keys: dict[str, dict[str, Any]] = {}

    def org_usage(self, org: str) -> dict[str, float]:
        found = self.usage.get(org)
        if found is None:
            found = self.usage[org] = {
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "cost_usd": 0.0,
            }
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": {
                "total": sum(self.by_status.values()),
                "by_status": dict(self.by_status),
                "by_endpoint": dict(self.by_endpoint),
            },
            "rate_limited": {
                "total": sum(self.rate_limited.values()),
                **{
                    k: self.rate_limited.get(k, 0)
                    for k in ("RPM", "TPM", "RPD", "TPD", "too_large", "slow_down", "project")
                },
                "insufficient_quota": self.rate_limited.get("insufficient_quota", 0),
            },
            "faults": dict(self.faults),
            "tiers": dict(self.tiers),
            "usage": {org: dict(u) for org, u in self.usage.items()},
            "keys": {label: dict(v) for label, v in self.keys.items()},
        }


class SimState:
    """Buckets, credit, usage and stats of one simulator, plus the request pipeline's building blocks."""

    def __init__(self, config: SimConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SimConfig()
        self.clock: Clock = clock or SystemClock()
        self._started = self.clock.now()  # the origin of flex_busy periods
        self.lock = threading.RLock()
        self.enforcer = Enforcer.for_config(self.config)
        self._stats = _Stats()
        self._fault_rng = random.Random(self.config.seed)
        # Ids are unique across simulators and runs (clients may key on them) unless made reproducible.
        self._id_rng = random.Random(self.config.seed ^ 0x5EED) if self.config.deterministic_ids else random.Random()
        self._models: dict[str, ModelSpec] = {m.id: m for m in self.config.models}
        # The same resolution ideal_admissions uses (SimConfig.pool_limits), precomputed for the hot path.
        self._pools: dict[str, tuple[str, Limits]] = {m: self.config.pool_limits(m) for m in self._models}
        self._identities: dict[str, Identity] = {}
        self._projects: Mapping[str, Limits] = self.config.projects  # empty: one truthiness test per request
        self.longrun: LongRunning | None = None

    # -- identity -----------------------------------------------------------------------------------------

    def identify(self, authorization: str | None) -> Identity:
        """The identity of an ``Authorization`` header value; raises the 401 :class:`ApiError`."""
        key = ""
        if authorization:
            scheme, _, rest = authorization.strip().partition(" ")
            key = rest.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise ApiError(401, invalid_api_key_error(None))
        found = self._identities.get(key)
        if found is not None:
            return found
        if self.config.keys:
            spec = self.config.keys.get(key)
            if spec is None:
                raise ApiError(401, invalid_api_key_error(key))
            ident = Identity(spec.org, spec.project, redact_key(key))
        else:
            # Each distinct key is its own organization; the id is derived, never the key itself.
            digest = hashlib.sha256(key.encode()).hexdigest()[:24]
            ident = Identity(f"org-{digest}", None, redact_key(key))
        with self.lock:
            self._identities[key] = ident
            self._stats.keys.setdefault(ident.key_label, {"org": ident.org, "requests": 0})
        return ident

    def authenticate(self, request: Request) -> str | Response:
        try:
            ident = self.identify(request.headers.get("authorization"))
        except ApiError as exc:
            return self.error_response(exc)
        self.note_request(ident)
        return ident.org

    def note_request(self, ident: Identity) -> None:
        ctx = _current.get()
        if ctx is not None:
            ctx.org = ident.org
            ctx.project = ident.project
        with self.lock:
            stats = self._stats
            per_key = stats.keys.get(ident.key_label)
            if per_key is None:
                per_key = stats.keys[ident.key_label] = {"org": ident.org, "requests": 0}
            per_key["requests"] += 1
            stats.org_usage(ident.org)["requests"] += 1

    # -- models and buckets ---------------------------------------------------------------------------

    def model(self, model_id: str) -> ModelSpec | None:
        return self._models.get(model_id)

    @property
    def models(self) -> list[ModelSpec]:
        return list(self._models.values())

    def pool(self, model: str | None) -> tuple[str, Limits]:
        if model is None:
            return ORG_WIDE_POOL, self.config.default_limits
        return self._pools.get(model) or (ORG_WIDE_POOL, self.config.default_limits)

    def _buckets(self, org: str, model: str | None) -> tuple[PoolBuckets, PoolBuckets | None]:
        """The org's buckets for ``model``'s pool, and its project's (``None``: no project limits apply).

        The project is the current request's (its key's ``KeySpec.project``): without a request context (a
        caller outside a request) only the organization's buckets are found.
        """
        name, limits = self.pool(model)
        # Ramp limits are about inference traffic; GETs (the org-wide bucket) are never slow_down'd.
        buckets = self.enforcer.buckets(org, name, limits, ramped=name != ORG_WIDE_POOL)
        project: PoolBuckets | None = None
        ctx = _current.get()
        if ctx is not None:
            ctx.org = org
            ctx.buckets = buckets
            if self._projects:  # nothing more on the hot path unless some project has limits
                named = ctx.project
                if named is not None and (project_limits := self._projects.get(named)) is not None:
                    project = self.enforcer.project_buckets(org, named, name, project_limits)
                ctx.project_buckets = project
        return buckets, project

    def admit(self, org: str, model: str | None, cost_tokens: int) -> ApiError | None:
        """The sans-response core of :meth:`charge`: ``None`` when admitted, else the 429 as an ApiError."""
        config = self.config
        with self.lock:
            buckets, project = self._buckets(org, model)
            if config.credit_usd is not None and self._stats.org_usage(org)["cost_usd"] >= config.credit_usd:
                # Counted under "insufficient_quota" whatever the configured code (the stats' key is the kind).
                self._stats.rate_limited["insufficient_quota"] += 1
                ctx = _current.get()
                if ctx is not None:
                    ctx.omit_ratelimit = True
                return ApiError(429, insufficient_quota_error(config.quota_error_code))
            now = self.clock.now()
            refusal = buckets.admit(1, cost_tokens, now, count_refused=config.count_refused_requests, project=project)
            if refusal is None:
                return None
            label = model or "requests"
            org_name = org
            project_name: str | None = None
            if refusal.project:
                ctx = _current.get()
                project_name = ctx.project if ctx is not None else None
            if refusal.too_large:
                self._stats.rate_limited["too_large"] += 1
                return ApiError(
                    429,
                    request_too_large_error(
                        label, org_name, refusal.kind, refusal.limit, refusal.requested, project=project_name
                    ),
                )
            if refusal.slow_down:
                self._stats.rate_limited["slow_down"] += 1
                body = slow_down_error(refusal.wait)
            else:
                # A project's refusals are counted apart (under "project"), so the per-kind counts stay the org's.
                self._stats.rate_limited["project" if refusal.project else refusal.kind.name] += 1
                body = rate_limit_error(
                    label,
                    org_name,
                    refusal.kind,
                    refusal.limit,
                    refusal.used,
                    refusal.requested,
                    refusal.wait,
                    project=project_name,
                )
            headers: dict[str, str] = {}
            faults = config.faults
            if self._draw(faults.retry_after_p):
                # Rounded up, less float noise: a wait of 2 s computed as 2.0000000000000004 is "2", not "3".
                if config.retry_after == "ceil":
                    headers["retry-after"] = str(max(1, math.ceil(refusal.wait - 1e-9)))
                elif config.retry_after == "exact":
                    headers["retry-after"] = f"{refusal.wait:.3f}".rstrip("0").rstrip(".")
                if config.retry_after_ms:
                    headers["retry-after-ms"] = str(math.ceil(refusal.wait * 1000 - 1e-6))
            if not self._draw(faults.ratelimit_headers_on_429):
                ctx = _current.get()
                if ctx is not None:
                    ctx.omit_ratelimit = True
            # Older servers sent the ramp limit's refusal as a 503 (openai-behaviour.md §7).
            return ApiError(config.slow_down_status if refusal.slow_down else 429, body, headers)

    def _draw(self, p: float) -> bool:
        """True with probability ``p`` from the seeded fault RNG (0 and 1 draw nothing). Caller holds the lock."""
        if p >= 1.0:
            return True
        if p <= 0.0:
            return False
        return self._fault_rng.random() < p

    def admit_request(self, org: str, model: str | None, cost_tokens: int, endpoint: str) -> ApiError | None:
        """:meth:`charge` without building a response (the ASGI app's fast path)."""
        with self.lock:
            self._stats.by_endpoint[endpoint] += 1
            if model is None and not self.config.count_get_requests:
                self._buckets(org, None)
                return None
            return self.admit(org, model, cost_tokens)  # re-entrant lock: one acquisition in effect

    def charge(self, org: str, model: str | None, cost_tokens: int, endpoint: str) -> Response | None:
        error = self.admit_request(org, model, cost_tokens, endpoint)
        return None if error is None else self.error_response(error)

    def count_request(self, org: str, model: str | None) -> None:
        """Count a request that is answered without admission (a 400/404): it still costs one request."""
        if model is not None and model not in self._models:
            model = None
        with self.lock:
            buckets, project = self._buckets(org, model)
            buckets.charge_requests(1, self.clock.now(), project=project)

    def settle(self, org: str, model: str, charged_tokens: int, actual_tokens: int) -> None:
        """Correct the token buckets from the admission charge to the actual usage (see the README).

        The project's buckets are corrected too when the current request's key belongs to a project with limits.
        A caller outside a request context (none today: batch lines and background responses are billed, never
        settled) would correct the organization's buckets only, leaving the project's at the admission charge.
        """
        if self.config.settle_actual_tokens and actual_tokens != charged_tokens:
            with self.lock:
                buckets, project = self._buckets(org, model)
                buckets.settle(actual_tokens - charged_tokens, self.clock.now(), project=project)

    # -- content, usage and billing -----------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        # No lock: Random.getrandbits is a single C call, atomic under the GIL.
        return f"{prefix}{self._id_rng.getrandbits(96):024x}"

    def validated_model(self, endpoint: Endpoint, body: Any) -> ModelSpec:
        """Validate ``body`` for ``endpoint`` and return its model; raises 400/404 :class:`ApiError`."""
        endpoint.rules.check(body)  # every endpoint's rules require a non-empty string model
        spec = self._models.get(body["model"])
        if spec is None:
            raise ApiError(404, model_not_found_error(body["model"]))
        return spec

    def execute(
        self, endpoint: str, body: Any, org: str, *, batch: bool = False, bill: bool = True
    ) -> tuple[int, dict[str, Any]]:
        """The responder pipeline without rate limiting: ``(status, body)`` for any input, never raises."""
        found = ENDPOINTS.get(endpoint)
        if found is None:
            unknown = invalid_url("POST", endpoint)
            return unknown.status, unknown.body
        try:
            spec = self.validated_model(found, body)
            generated = found.respond(self.config, spec, body, self.new_id, int(self.clock.wall()))
        except ApiError as exc:
            return exc.status, exc.body
        except Exception:
            # A simulator bug: one line's 500 (as the app answers one request), not a lost batch.
            log.exception("simulator internal error executing %s", endpoint)
            self.note_fault("internal_error")
            return 500, server_error()
        if bill:
            self.bill(org, spec.id, generated.body.get("usage") or {}, batch=batch)
        return 200, generated.body

    def complete(
        self,
        org: str,
        model: str,
        charged_tokens: int,
        usage: Mapping[str, Any],
        actual_tokens: int,
        tier: str | None = None,
    ) -> None:
        """After a response is produced: :meth:`settle` the token buckets and :meth:`bill` the org, in one go."""
        with self.lock:
            self.settle(org, model, charged_tokens, actual_tokens)
            self.bill(org, model, usage, tier=tier)
            if tier is not None:
                self._stats.tiers[tier] += 1

    def flex_refusal(self, org: str, model: str, charged_tokens: int) -> ApiError | None:
        """A flex request when flex lacks resources (at random, or in a busy period): the 429 to answer, its
        tokens returned to the bucket and nothing billed ("You will not be charged"). ``None``: served."""
        config = self.config
        elapsed = self.clock.now() - self._started
        busy = any(start <= elapsed < end for start, end in config.flex_busy)
        with self.lock:
            if not busy and not self._draw(config.flex_unavailable_p):
                return None
            self._stats.tiers["flex_unavailable"] += 1
        self.settle(org, model, charged_tokens, 0)
        return ApiError(
            429,
            error_body(
                "Resource Unavailable: flex processing lacks sufficient resources to serve this request right now. "
                "Please retry later, or retry with service_tier 'auto'. You will not be charged for this request.",
                "rate_limit_error",
                config.flex_error_code,
            ),
        )

    def bill(
        self, org: str, model: str, usage: Mapping[str, Any], batch: bool = False, tier: str | None = None
    ) -> float:
        prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        completion = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
        cost = self.config.prices.cost(model, prompt, completion, batch=batch, tier=tier)
        with self.lock:
            u = self._stats.org_usage(org)
            u["prompt_tokens"] += prompt
            u["completion_tokens"] += completion
            u["total_tokens"] += prompt + completion
            u["cost_usd"] += cost
        return cost

    # -- faults -------------------------------------------------------------------------------------------

    def draw_fault(self) -> str | None:
        """One seeded draw: ``"500"``, ``"503"``, ``"drop"``, ``"stall"`` or ``None``."""
        faults = self.config.faults
        if not faults.any_random:
            return None
        with self.lock:
            r = self._fault_rng.random()
            missing = faults.missing_headers > 0 and self._fault_rng.random() < faults.missing_headers
            unknown = faults.unknown_token_headers > 0 and self._fault_rng.random() < faults.unknown_token_headers
        ctx = _current.get()
        if missing:
            if ctx is not None:
                ctx.omit_ratelimit = True
            self.note_fault("missing_headers")
        elif unknown:
            if ctx is not None:
                ctx.unknown_tokens = True
            self.note_fault("unknown_token_headers")
        for name, p in (
            ("500", faults.error_500),
            ("503", faults.error_503),
            ("drop", faults.drop),
            ("stall", faults.stall),
        ):
            if r < p:
                self.note_fault(name)
                return name
            r -= p
        return None

    def latency_jitter(self) -> float:
        """A factor in ``[1 - jitter, 1 + jitter]`` (seeded)."""
        jitter = self.config.latency_jitter
        if jitter <= 0:
            return 1.0
        with self.lock:
            return 1.0 + self._fault_rng.uniform(-jitter, jitter)

    def note_fault(self, name: str) -> None:
        with self.lock:
            self._stats.faults[name] += 1

    # -- responses ---------------------------------------------------------------------------------------

    def note_status(self, status: int) -> None:
        with self.lock:
            self._stats.by_status[str(status)] += 1

    def ratelimit_headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for the current request's bucket (empty if none or omitted)."""
        ctx = _current.get()
        if ctx is None or ctx.buckets is None or ctx.omit_ratelimit:
            return {}
        with self.lock:
            headers = ctx.buckets.headers(self.clock.now(), ctx.project_buckets).to_headers()
        if ctx.unknown_tokens:
            for name in ("limit", "remaining", "reset"):
                if f"x-ratelimit-{name}-tokens" in headers:
                    headers[f"x-ratelimit-{name}-tokens"] = "-1"
        return headers

    def error_response(self, error: ApiError) -> Response:
        from starlette.responses import Response

        return Response(orjson.dumps(error.body), error.status, error.headers, media_type="application/json")

    # -- introspection -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            out = self._stats.as_dict()
        longrun = self.longrun
        if longrun is not None:
            out["longrun"] = longrun.stats()
        return out

    def reset(self) -> None:
        with self.lock:
            self.enforcer.reset()
            self._stats = _Stats()
            self._identities.clear()
            self._fault_rng = random.Random(self.config.seed)
        longrun = self.longrun
        if longrun is not None:
            longrun.reset()  # outside the lock: it may wait for its webhook thread, which may be billing

    # -- request context ---------------------------------------------------------------------------------

    def begin_request(self) -> tuple[RequestContext, contextvars.Token[RequestContext | None]]:
        ctx = RequestContext(self.new_id("req_"))
        return ctx, _current.set(ctx)

    @staticmethod
    def end_request(token: contextvars.Token[RequestContext | None]) -> None:
        _current.reset(token)
