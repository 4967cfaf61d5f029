"""A spending cap checked *before* each request, with alerts as spending crosses 50/80/100%.

Before a generation request is sent, its worst case (prompt estimate + maximum output, priced) is reserved;
if spent + reserved + worst case would cross the cap, :class:`~ratepilot.errors.BudgetExceeded` is raised and
nothing is sent. When the response arrives the reservation is replaced by the actual cost. Reserving
in-flight worst cases keeps concurrent requests from jointly overshooting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BudgetExceeded

__all__ = ["ALERT_THRESHOLDS", "Budget", "BudgetAlert", "Reservation"]

log = logging.getLogger("ratepilot.budget")

ALERT_THRESHOLDS = (0.5, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """Passed to alert callbacks: ``threshold`` (0.5, 0.8 or 1.0) was reached."""

    threshold: float
    spent_usd: float
    budget_usd: float
    refused: bool = False  # True when the 100% alert fires because a request was refused


@dataclass(frozen=True, slots=True)
class Reservation:
    usd: float


class Budget:
    def __init__(
        self,
        limit_usd: float,
        *,
        on_alert: Callable[[BudgetAlert], None] | None = None,
        thresholds: tuple[float, ...] = ALERT_THRESHOLDS,
        spent_usd: float = 0.0,
    ) -> None:
        """``spent_usd``: already spent against this budget (a resumed job's earlier runs: a budget belongs to
        the job, not to one run of it)."""
        if limit_usd < 0:
            raise ValueError("budget_usd must be >= 0")
        self.limit_usd = limit_usd
        self._callbacks: list[Callable[[BudgetAlert], None]] = [on_alert] if on_alert else []
        self._thresholds = sorted(thresholds)
        self._fired: set[float] = set()
        self._lock = threading.Lock()
        self.spent_usd = max(0.0, spent_usd)
        self.reserved_usd = 0.0
        # Thresholds already behind a resumed job are not announced again.
        for t in self._thresholds:
            if self.limit_usd > 0 and self.spent_usd / self.limit_usd >= t:
                self._fired.add(t)

    def add_alert(self, callback: Callable[[BudgetAlert], None]) -> None:
        self._callbacks.append(callback)

    def reserve(self, worst_case_usd: float, model: str | None) -> Reservation:
        with self._lock:
            if self.spent_usd + self.reserved_usd + worst_case_usd > self.limit_usd + 1e-12:
                # What is committed: spent, plus what requests in flight may still cost.
                committed = self.spent_usd + self.reserved_usd
                # The refusal is the 100% alert. Lower thresholds not reached yet are dropped, so that no "50%"
                # can follow a "100%": the alerts a caller sees are always in order.
                fire = self._mark(1.0)
                self._fired.update(t for t in self._thresholds if t < 1.0)
                alerts = [BudgetAlert(1.0, committed, self.limit_usd, refused=True)] if fire else []
            else:
                self.reserved_usd += worst_case_usd
                return Reservation(worst_case_usd)
        for alert in alerts:
            self._emit(alert)
        raise BudgetExceeded(budget_usd=self.limit_usd, spent_usd=committed, worst_case_usd=worst_case_usd, model=model)

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)

    def commit(self, reservation: Reservation | None, actual_usd: float) -> None:
        """Replace a reservation by what the response actually cost (also used for unreserved spend)."""
        alerts: list[BudgetAlert] = []
        with self._lock:
            if reservation is not None:
                self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
            self.spent_usd += actual_usd
            fraction = self.spent_usd / self.limit_usd if self.limit_usd > 0 else 1.0
            for t in self._thresholds:
                if fraction >= t and self._mark(t):
                    alerts.append(BudgetAlert(t, self.spent_usd, self.limit_usd))
        for a in alerts:
            self._emit(a)

    def _mark(self, threshold: float) -> bool:
        if threshold in self._fired:
            return False
        self._fired.add(threshold)
        return True

    def _emit(self, alert: BudgetAlert) -> None:
        log.warning(
            "ratepilot budget: %.0f%% reached ($%.6f of $%.4f)%s",
            alert.threshold * 100,
            alert.spent_usd,
            alert.budget_usd,
            " - a request was refused" if alert.refused else "",
        )
        for cb in self._callbacks:
            try:
                cb(alert)
            except Exception:  # an alert hook must never break the request path
                log.exception("ratepilot budget alert callback failed")
