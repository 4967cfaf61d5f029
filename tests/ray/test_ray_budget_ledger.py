"""SharedBudget: one spending cap in Redis for every process of a job (no Ray needed to test it)."""

from __future__ import annotations

import socket

import pytest

from ratepilot.client.budget import BudgetAlert
from ratepilot.client.shared_budget import SharedBudget
from ratepilot.errors import BudgetExceeded, StoreUnavailable
from ratepilot.limits.stores import redis_url_and_prefix


def test_two_processes_share_one_cap(store: str) -> None:
    a = SharedBudget(store, "job-1", 10.0)
    b = SharedBudget(store, "job-1", 10.0)
    try:
        held = a.reserve(6.0, "gpt-4o-mini")
        with pytest.raises(BudgetExceeded) as refused:
            b.reserve(5.0, "gpt-4o-mini")  # 6 reserved elsewhere + 5 > 10: each alone would have said yes
        assert refused.value.spent_usd == pytest.approx(6.0)  # in flight counts at its worst case
        other = b.reserve(4.0, "gpt-4o-mini")
        a.commit(held, 3.0)  # the answer cost less than its worst case: 3 of the 6 come back
        assert b.snapshot() == pytest.approx((3.0, 4.0))
        b.commit(other, 4.0)
        assert a.snapshot() == pytest.approx((7.0, 0.0))
        with pytest.raises(BudgetExceeded):
            a.reserve(3.5, None)
        b.release(b.reserve(3.0, None))  # never sent: nothing spent
        assert a.snapshot() == pytest.approx((7.0, 0.0))
    finally:
        a.delete()
        a.close()
        b.close()


def test_earlier_spending_seeds_a_new_ledger_only(store: str) -> None:
    first = SharedBudget(store, "job-2", 1.0, spent_usd=0.25)
    late = SharedBudget(store, "job-2", 1.0, spent_usd=0.9)  # the ledger exists: its figure wins
    try:
        assert late.snapshot() == pytest.approx((0.25, 0.0))
        late.reserve(0.5, None)
        late.reset_reserved()  # a new run: nobody of the job is in flight
        assert first.snapshot() == pytest.approx((0.25, 0.0))
    finally:
        first.delete()
        first.close()
        late.close()


def test_each_alert_is_announced_once_for_the_whole_job(store: str) -> None:
    seen: list[tuple[str, BudgetAlert]] = []
    a = SharedBudget(store, "job-3", 1.0, on_alert=lambda alert: seen.append(("a", alert)))
    b = SharedBudget(store, "job-3", 1.0, on_alert=lambda alert: seen.append(("b", alert)))
    try:
        a.commit(a.reserve(0.6, None), 0.6)  # 60%: a announces 50%
        b.commit(b.reserve(0.1, None), 0.1)  # 70%: nothing new
        b.commit(b.reserve(0.15, None), 0.15)  # 85%: b announces 80%, a never does
        with pytest.raises(BudgetExceeded):
            a.reserve(0.2, None)
        with pytest.raises(BudgetExceeded):
            b.reserve(0.2, None)
        assert [(who, alert.threshold, alert.refused) for who, alert in seen] == [
            ("a", 0.5, False),
            ("b", 0.8, False),
            ("a", 1.0, True),
        ]
    finally:
        a.delete()
        a.close()
        b.close()


def test_an_unreachable_store_is_named_without_its_password() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailable) as failed:
        SharedBudget(f"redis://:hunter2-secret@127.0.0.1:{port}/0", "job-4", 1.0)
    assert "hunter2" not in str(failed.value) and "***" in str(failed.value)


def test_only_redis_urls() -> None:
    assert redis_url_and_prefix("redis://h:1/2?prefix=p:&socket_timeout=2") == ("redis://h:1/2?socket_timeout=2", "p:")
    with pytest.raises(ValueError, match="Redis URL"):
        redis_url_and_prefix("sqlite:///tmp/x.db")


def test_settings_need_redis_and_never_show_the_key() -> None:
    from ratepilot.ray import PilotSettings

    settings = PilotSettings(store="redis://127.0.0.1:6379/0", api_key="test-key-ray-secret")
    assert "test-key-ray-secret" not in repr(settings)
    assert PilotSettings(store="redis://h/0").job != PilotSettings(store="redis://h/0").job  # one job per settings
    with pytest.raises(ValueError, match="Redis URL"):
        PilotSettings(store="sqlite:///tmp/limits.db")
