"""A spending cap shared by every process that names the same Redis key: one budget for a whole cluster.

:class:`~ratepilot.client.budget.Budget` keeps ``spent`` and ``reserved`` in one process's memory, so four Ray
actors each given ``budget_usd=10`` could spend 40 between them. :class:`SharedBudget` keeps them in one Redis
hash and checks-and-reserves in one Lua script (atomic: two processes can never both take the last dollar).
It is a drop-in for the Pilot's budget (``pilot.budget = SharedBudget(...)``): the same ``reserve`` /
``release`` / ``commit`` calls, the same :class:`~ratepilot.errors.BudgetExceeded`, and the 50/80/100% alerts,
each announced once for the whole cluster (the process that crosses a threshold first claims it in Redis).

The hash (``<prefix>budget:<job>``: fields ``spent``, ``reserved``, ``fired:<threshold>``) expires a week after
its last use. A process killed with requests in flight leaves their worst cases in ``reserved`` (the safe
direction: the budget refuses early); :meth:`SharedBudget.reset_reserved` clears them when a new run starts and
nobody is in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BudgetExceeded, StoreUnavailable
from ..limits.stores import redis_url_and_prefix
from ..limits.stores.redis import SOCKET_TIMEOUT_S, safe_url
from .budget import ALERT_THRESHOLDS, Budget, BudgetAlert, Reservation

__all__ = ["BUDGET_TTL_MS", "SharedBudget"]

log = logging.getLogger("ratepilot.budget")

BUDGET_TTL_MS = 7 * 86_400 * 1000  # a job's ledger outlives a weekend of reruns, then goes

# Floats go back as strings: Redis truncates a Lua number in a reply to an integer.
_RESERVE = """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[4])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[1]) + 1e-12 then
  return {0, tostring(spent), tostring(reserved)}
end
reserved = redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, tostring(spent), reserved}
"""

_COMMIT = """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[4])
local reserved = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', '-' .. ARGV[1]))
if reserved < 1e-12 then
  -- float rounding (or a reset_reserved while a request was in flight) must never leave a negative reservation
  redis.call('HSET', KEYS[1], 'reserved', '0')
  reserved = 0
end
local spent = redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {spent, tostring(reserved)}
"""


class SharedBudget(Budget):
    """A :class:`Budget` whose ledger lives in Redis under ``<prefix>budget:<job>``.

    ``spent_usd`` seeds the ledger only if it does not exist yet (the first process of a job decides what
    earlier runs spent). After each call, ``spent_usd`` / ``reserved_usd`` hold the cluster-wide values Redis
    answered with.
    """

    def __init__(
        self,
        url: str,
        job: str,
        limit_usd: float,
        *,
        on_alert: Callable[[BudgetAlert], None] | None = None,
        thresholds: tuple[float, ...] = ALERT_THRESHOLDS,
        spent_usd: float = 0.0,
    ) -> None:
        super().__init__(limit_usd, on_alert=on_alert, thresholds=thresholds, spent_usd=spent_usd)
        redis_url, prefix = redis_url_and_prefix(url)
        self.key = f"{prefix}budget:{job}"
        self._initial = max(0.0, spent_usd)
        self._client: Any = redis.Redis.from_url(
            redis_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self._safe_url = safe_url(redis_url)
        self._reserve_script = self._client.register_script(_RESERVE)
        self._commit_script = self._client.register_script(_COMMIT)
        self._call(lambda: self._client.hsetnx(self.key, "spent", repr(self._initial)))

    # -- the Budget interface ------------------------------------------------------------------------------------

    def reserve(self, worst_case_usd: float, model: str | None) -> Reservation:
        ok, spent, reserved = self._call(
            lambda: self._reserve_script(
                keys=[self.key], args=[repr(self.limit_usd), repr(worst_case_usd), BUDGET_TTL_MS, repr(self._initial)]
            )
        )
        self._seen(float(spent), float(reserved))
        if int(ok) == 1:
            return Reservation(worst_case_usd)
        committed = float(spent) + float(reserved) - 0.0
        if self._claim(1.0):
            # As the local budget: a refusal is the 100% alert, and no lower one may follow it.
            for t in self._thresholds:
                if t < 1.0:
                    self._claim(t)
            self._emit(BudgetAlert(1.0, committed, self.limit_usd, refused=True))
        raise BudgetExceeded(budget_usd=self.limit_usd, spent_usd=committed, worst_case_usd=worst_case_usd, model=model)

    def release(self, reservation: Reservation) -> None:
        self.commit(reservation, 0.0)

    def commit(self, reservation: Reservation | None, actual_usd: float) -> None:
        held = reservation.usd if reservation is not None else 0.0
        spent, reserved = self._call(
            lambda: self._commit_script(
                keys=[self.key], args=[repr(held), repr(actual_usd), BUDGET_TTL_MS, repr(self._initial)]
            )
        )
        self._seen(float(spent), float(reserved))
        if actual_usd <= 0:
            return
        fraction = self.spent_usd / self.limit_usd if self.limit_usd > 0 else 1.0
        for t in self._thresholds:
            if fraction >= t and self._claim(t):
                self._emit(BudgetAlert(t, self.spent_usd, self.limit_usd))

    # -- cluster-wide housekeeping -------------------------------------------------------------------------------

    def reset_reserved(self) -> None:
        """Forget every in-flight reservation: call it when a run starts and no process of the job is sending."""
        self._call(lambda: self._client.hset(self.key, "reserved", "0"))

    def snapshot(self) -> tuple[float, float]:
        """(spent, reserved) for the whole cluster, now."""
        spent, reserved = self._call(lambda: self._client.hmget(self.key, "spent", "reserved"))
        self._seen(float(spent or 0.0), float(reserved or 0.0))
        return self.spent_usd, self.reserved_usd

    def delete(self) -> None:
        """Remove the ledger (a finished job's, or a test's)."""
        self._call(lambda: self._client.delete(self.key))

    def close(self) -> None:
        self._client.close()

    # -- helpers -------------------------------------------------------------------------------------------------

    def _claim(self, threshold: float) -> bool:
        """True for the one process that announces ``threshold`` (first to set its flag in Redis)."""
        if threshold in self._fired:
            return False
        self._fired.add(threshold)
        return bool(self._call(lambda: self._client.hsetnx(self.key, f"fired:{threshold:g}", "1")))

    def _seen(self, spent: float, reserved: float) -> None:
        with self._lock:
            self.spent_usd, self.reserved_usd = spent, max(0.0, reserved)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(f"the shared budget in {self._safe_url} cannot be used: {exc}") from exc
