"""What one request's :class:`~ratepilot.client.exchange.Exchange` works with, and nothing more.

The limiter, the retry policy, the usage ledger and the budget, the clock — and the client's memory of the
server: the latest ``x-ratelimit-*`` headers per scope (for :meth:`Pilot.limits`), the hosts that have answered
(a connection failure to a host that never did is most likely a wrong base URL), and the long-running objects
whose usage is already in the ledger (so a poll never records it twice). A :class:`~ratepilot.client.Pilot`
assembles one and hands it to every exchange; a test can build one directly, without a Pilot or a transport.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..clock import Clock
from ..limits import DimensionView, Scope
from ..protocol.headers import RateLimitHeaders
from ..protocol.usage import usage_from_body
from ..retry import RetryPolicy
from .budget import Budget
from .ledger import UsageLedger

__all__ = ["ACCOUNTED_IDS_KEPT", "ClientCore"]

ACCOUNTED_IDS_KEPT = 10_000
"""How many finished objects' ids are remembered as already accounted (the least recently seen go first)."""

_FINISHED = frozenset({"completed", "failed", "expired", "cancelled", "incomplete"})
_BILLED_OBJECTS = frozenset({"thread.run", "batch", "response"})


class ClientCore:
    """The parts of a client every exchange shares (see the module docstring). Thread-safe."""

    def __init__(
        self,
        *,
        limiter: Any,
        retry: RetryPolicy,
        ledger: UsageLedger,
        budget: Budget | None,
        clock: Clock,
        settle_to_usage: bool = True,
    ) -> None:
        self.limiter = limiter
        self.retry = retry
        self.ledger = ledger
        self.budget = budget
        self.clock = clock
        self.settle_to_usage = settle_to_usage
        self.answered_hosts: set[str] = set()
        self._lock = threading.Lock()
        self._headers: dict[Scope, tuple[RateLimitHeaders, float]] = {}
        self._accounted: OrderedDict[str, None] = OrderedDict()

    # -- the server's headers ------------------------------------------------------------------------------

    def remember(self, scope: Scope, headers: RateLimitHeaders) -> None:
        """What the server last said of ``scope``: its headers, or a header-less 429's words. Families the new
        value lacks keep their last value (re-dated: a view from them errs towards less room)."""
        with self._lock:
            old = self._headers.get(scope)
            self._headers[scope] = (headers if old is None else headers.or_else(old[0]), self.clock.now())

    def latest_headers(self, model: str, key_id: str | None) -> tuple[float, Scope, RateLimitHeaders] | None:
        """``(seen_at, scope, headers)``: the newest headers seen for ``model`` (and ``key_id``, if given)."""
        with self._lock:
            candidates = [
                (seen, scope, h)
                for scope, (h, seen) in self._headers.items()
                if scope.model == model and (key_id is None or scope.key_id == key_id)
            ]
        return max(candidates, key=lambda c: c[0]) if candidates else None

    def limiter_view(self, scope: Scope) -> dict[str, DimensionView]:
        """The limiter's view of ``scope`` (``{}`` when the limiter cannot tell: a view is never worth an error)."""
        try:
            view = self.limiter.state(scope)
        except Exception:
            return {}
        return dict(view) if isinstance(view, Mapping) else {}

    # -- long-running objects, accounted once ----------------------------------------------------------------

    def mark_accounted(self, obj: Any) -> None:
        """``obj`` (a parsed response body) is in the ledger already; a later poll must not record it again."""
        oid = obj.get("id") if isinstance(obj, Mapping) else None
        if isinstance(oid, str):
            with self._lock:
                self._remember_accounted(oid)

    def account_object(self, obj: Any) -> None:
        """Record the usage of a finished Assistants run, Batch (at the batch price) or background response
        (``obj``: a parsed poll body), the first time a poll shows it finished. Each object is recorded once,
        however often it is polled."""
        if not isinstance(obj, Mapping) or obj.get("status") not in _FINISHED:
            return
        kind, oid, model = obj.get("object"), obj.get("id"), obj.get("model")
        if kind not in _BILLED_OBJECTS or not isinstance(oid, str) or not isinstance(model, str):
            return
        usage = usage_from_body(obj)
        if usage is None or usage.total == 0:
            return
        with self._lock:
            if not self._remember_accounted(oid):
                return
        cost = self.ledger.record(model, usage, batch=kind == "batch")
        if self.budget is not None:
            self.budget.commit(None, cost)

    def _remember_accounted(self, oid: str) -> bool:
        """Under ``self._lock``: remember ``oid``; False when it was already remembered."""
        if oid in self._accounted:
            self._accounted.move_to_end(oid)
            return False
        self._accounted[oid] = None
        if len(self._accounted) > ACCOUNTED_IDS_KEPT:
            self._accounted.popitem(last=False)
        return True
