"""A limiter that admits everything at once: used when no real limiter is available (or wanted).

It has the :class:`ratepilot.limits.Limiter` interface so the transport never branches on it.
"""

from __future__ import annotations

from typing import Any

from ..limits.types import Cost, DimensionView, Grant, Priority, Scope

__all__ = ["PassThroughLimiter"]


class PassThroughLimiter:
    def acquire(self, scope: Scope, cost: Cost, priority: Priority = Priority.NORMAL) -> Grant:
        return self._grant(scope, cost)

    async def aacquire(self, scope: Scope, cost: Cost, priority: Priority = Priority.NORMAL) -> Grant:
        return self._grant(scope, cost)

    def _grant(self, scope: Scope, cost: Cost) -> Grant:
        return Grant(scope=scope, cost=cost, seq=0, granted_at=0.0, used=(), charged=())

    def settle(self, grant: Grant, actual_tokens: int | None, *, headers_follow: bool = True) -> None:
        grant.done = True

    def cancel(self, grant: Grant) -> None:
        grant.done = True

    def observe(self, scope: Scope, headers: Any, sent_at: float, grant: Grant | None = None) -> None:
        return None

    def penalize(self, scope: Scope, wait_s: float) -> None:
        return None

    def state(self, scope: Scope) -> dict[str, DimensionView]:
        return {}

    def close(self) -> None:
        return None
