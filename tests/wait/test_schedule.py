"""The sans-IO poll schedule: terminal statuses, adaptive timing, server hints, budgets and deadlines."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from ratepilot.poll import KINDS, Finished, Poll, PollPolicy, PollSchedule, Snapshot, StopPolling, kind_of, snapshot

Model = Callable[[float], Snapshot]


def batch_model(duration: float, total: int = 1000, validate: float = 0.02, finalize: float = 0.02) -> Model:
    """A batch created at t=0 that validates, processes its lines at a steady rate, finalizes, completes."""
    v, f = duration * validate, duration * finalize
    run = duration - v - f

    def at(t: float) -> Snapshot:
        if t < v:
            return Snapshot("batch_m", "validating", 0, total, created_at=0.0)
        if t < v + run:
            return Snapshot("batch_m", "in_progress", int(total * (t - v) / run), total, created_at=0.0, started_at=v)
        if t < duration:
            return Snapshot("batch_m", "finalizing", total, total, created_at=0.0, started_at=v)
        return Snapshot("batch_m", "completed", total, total, created_at=0.0, started_at=v)

    return at


def response_model(duration: float) -> Model:
    def at(t: float) -> Snapshot:
        status = "queued" if t < 1 else "in_progress" if t < duration else "completed"
        return Snapshot("resp_m", status, created_at=0.0)

    return at


def run_schedule(kind: str, model: Model, **kw: object) -> tuple[PollSchedule, float, object]:
    """Drive a schedule against a model on a virtual clock; return it, the time it stopped, and its decision."""
    s = PollSchedule.begin(KINDS[kind], now=0.0, wall=0.0, **kw)  # type: ignore[arg-type]
    t = 0.0
    d = s.start(model(0.0), t)
    while isinstance(d, Poll):
        t += d.after
        d = s.observe(model(t), t)
        assert s.polls < 10_000
    return s, t, d


@pytest.mark.parametrize(("duration", "max_polls", "max_delay_pct"), [(10, 8, 10), (600, 12, 5), (3600, 15, 5)])
def test_batch_is_noticed_quickly_with_few_polls(duration: float, max_polls: int, max_delay_pct: float) -> None:
    s, t, d = run_schedule("batch", batch_model(duration))
    assert isinstance(d, Finished)
    assert s.polls <= max_polls
    assert 0 <= t - duration <= duration * max_delay_pct / 100


def test_a_day_long_batch_stays_cheap_and_timely() -> None:
    s, t, d = run_schedule("batch", batch_model(86_400))
    assert isinstance(d, Finished) and s.polls <= 80 and t - 86_400 <= 0.05 * 86_400


def test_without_progress_the_delay_stays_a_fraction_of_the_age() -> None:
    for duration in (10, 600, 3600):
        s, t, d = run_schedule("response", response_model(duration))
        assert isinstance(d, Finished)
        assert t - duration <= max(0.25 * t, 1.0)  # blind_fraction of the age at detection
        assert s.polls <= 40  # ~log(age)/log(1.25): the price of seeing no progress


def test_first_check_is_soon_and_back_off_is_geometric_while_validating() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0)
    d = s.start(Snapshot("b", "validating", created_at=0.0), 0.0)
    assert d == Poll(1.0)
    delays = []
    t = 1.0
    for _ in range(5):
        d = s.observe(Snapshot("b", "validating", created_at=0.0), t)
        assert isinstance(d, Poll)
        delays.append(d.after)
        t += d.after
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_eta_from_progress_lands_a_poll_on_the_predicted_end() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0)
    s.start(Snapshot("b", "in_progress", 0, 1000, created_at=0.0, started_at=0.0), 0.0)
    d = s.observe(Snapshot("b", "in_progress", 100, 1000, created_at=0.0, started_at=0.0), 100.0)
    assert s.eta == pytest.approx(1000.0)
    assert isinstance(d, Poll) and d.after == pytest.approx(0.8 * 900)
    d = s.observe(Snapshot("b", "in_progress", 820, 1000, created_at=0.0, started_at=0.0), 820.0)
    assert isinstance(d, Poll) and d.after == pytest.approx(0.8 * 180)
    d = s.observe(Snapshot("b", "in_progress", 964, 1000, created_at=0.0, started_at=0.0), 964.0)
    assert isinstance(d, Poll) and 964.0 + d.after == pytest.approx(1000.0)
    progress = s.progress(964.0, d)
    assert (progress.done, progress.total, progress.polls) == (964, 1000, 3)
    assert progress.eta == pytest.approx(36.0) and progress.next_poll == d.after


def test_all_lines_done_means_finalizing_soon() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0)
    s.start(Snapshot("b", "in_progress", 10, 1000, created_at=0.0), 0.0)
    d = s.observe(Snapshot("b", "finalizing", 1000, 1000, created_at=0.0), 3000.0)
    assert isinstance(d, Poll) and d.after <= 0.03 * 3000 + 1e-9


def test_server_eta_of_a_fine_tuning_job_is_used() -> None:
    s = PollSchedule.begin(KINDS["fine_tuning.job"], now=0.0, wall=1_000_000.0)
    d = s.start(Snapshot("ftjob-1", "running", created_at=1_000_000.0, estimated_finish=1_003_600.0), 0.0)
    assert isinstance(d, Poll) and d.after == 1800.0  # 80% of the way, but never more than max_interval


def test_poll_after_header_is_a_floor() -> None:
    s = PollSchedule.begin(KINDS["thread.run"], now=0.0, wall=0.0)
    s.start(Snapshot("run_1", "queued"), 0.0)
    d = s.observe(Snapshot("run_1", "in_progress"), 1.0, poll_after=30.0)
    assert isinstance(d, Poll) and d.after == 30.0


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("thread.run", "requires_action"),
        ("thread.run", "expired"),
        ("batch", "expired"),
        ("batch", "cancelled"),
        ("response", "incomplete"),
        ("fine_tuning.job", "succeeded"),
        ("vector_store.file", "failed"),
        ("vector_store.file_batch", "completed"),
    ],
)
def test_terminal_statuses_end_the_wait_without_a_poll(kind: str, status: str) -> None:
    s = PollSchedule.begin(KINDS[kind], now=0.0, wall=0.0)
    assert isinstance(s.start(Snapshot("x", status), 0.0), Finished) and s.polls == 0


@pytest.mark.parametrize(
    ("kind", "status"),
    [("thread.run", "in_progress"), ("batch", "finalizing"), ("batch", "cancelling"), ("fine_tuning.job", "running")],
)
def test_non_terminal_statuses_keep_waiting(kind: str, status: str) -> None:
    s = PollSchedule.begin(KINDS[kind], now=0.0, wall=0.0)
    assert isinstance(s.start(Snapshot("x", status), 0.0), Poll)


def test_poll_budget_gives_up_with_the_last_state() -> None:
    s, _, d = run_schedule("batch", batch_model(3600), max_polls=3)
    assert isinstance(d, StopPolling) and d.reason == "max_polls" and s.polls == 3
    assert s.last is not None and s.last.status in ("validating", "in_progress")


def test_timeout_takes_a_last_look_at_the_deadline_then_gives_up() -> None:
    _, t, d = run_schedule("batch", batch_model(3600), timeout=100.0)
    assert isinstance(d, StopPolling) and d.reason == "timeout"
    assert t == pytest.approx(100.0)  # the final poll is exactly at the deadline, not after it
    assert "100s" in d.message


def test_bare_id_is_retrieved_at_once() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0)
    assert s.start(snapshot(KINDS["batch"], "batch_abc"), 0.0) == Poll(0.0)


def test_webhook_mode_never_polls_and_confirms_once() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0, webhooks=True, timeout=7200.0)
    d = s.start(Snapshot("b", "in_progress", 1, 10), 0.0)
    assert d == Poll(7200.0, wake_on_event=True)
    d = s.observe(Snapshot("b", "completed", 10, 10), 3600.0, woken=True)
    assert isinstance(d, Finished) and s.polls == 0 and s.retrieves == 1


def test_webhook_mode_rechecks_when_the_api_lags_behind_the_event() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0, webhooks=True)
    s.start(Snapshot("b", "in_progress"), 0.0)
    d = s.observe(Snapshot("b", "finalizing"), 10.0, woken=True)
    assert d == Poll(1.0)
    d = s.observe(Snapshot("b", "finalizing"), 11.0)
    assert d == Poll(2.0)
    assert isinstance(s.observe(Snapshot("b", "completed"), 13.0), Finished) and s.polls == 0


def test_webhook_mode_without_events_for_the_kind_falls_back_to_polling() -> None:
    s = PollSchedule.begin(KINDS["thread.run"], now=0.0, wall=0.0, webhooks=True)
    assert not s.webhooks
    d = s.start(Snapshot("run_1", "queued"), 0.0)
    assert isinstance(d, Poll) and not d.wake_on_event and math.isfinite(d.after)


def test_kind_of_objects_dicts_and_ids() -> None:
    assert kind_of({"object": "thread.run", "id": "run_1"}).object == "thread.run"
    assert kind_of("batch_123").object == "batch"
    assert kind_of("resp_123").object == "response"
    assert kind_of("ftjob-abc").object == "fine_tuning.job"
    with pytest.raises(ValueError, match="cannot wait on str 'chatcmpl-1'"):
        kind_of("chatcmpl-1")


def test_snapshot_reads_batch_counts_and_timestamps() -> None:
    obj = {
        "object": "batch",
        "id": "batch_1",
        "status": "in_progress",
        "created_at": 100,
        "in_progress_at": 110,
        "request_counts": {"total": 10, "completed": 3, "failed": 1},
    }
    assert snapshot(KINDS["batch"], obj) == Snapshot("batch_1", "in_progress", 4, 10, 100.0, 110.0)


def test_invalid_policy_and_arguments() -> None:
    with pytest.raises(ValueError):
        PollPolicy(backoff=0.5)
    with pytest.raises(ValueError):
        PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0, timeout=-1)


def test_transient_failures_back_off_then_give_up() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0, policy=PollPolicy(max_failures=3))
    s.start(Snapshot("b", "in_progress"), 0.0)
    assert [s.failed(0.0) for _ in range(3)] == [Poll(2.0), Poll(4.0), Poll(8.0)]
    d = s.failed(0.0)
    assert isinstance(d, StopPolling) and d.reason == "errors" and s.polls == 4
    s.observe(Snapshot("b", "in_progress"), 1.0)
    assert s.failures == 0  # a success resets the count


def test_a_failure_at_the_deadline_gives_up_as_a_timeout() -> None:
    s = PollSchedule.begin(KINDS["batch"], now=0.0, wall=0.0, timeout=10.0)
    s.start(Snapshot("b", "in_progress"), 0.0)
    d = s.failed(10.0)
    assert isinstance(d, StopPolling) and d.reason == "timeout"
