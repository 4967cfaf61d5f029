"""The clock's wait for a wakeup or a deadline: ``wait`` / ``wait_async`` on the fake and the real clock.

No test here sleeps: the fake clock's time moves only when a test (or an autojumping waiter) moves it, and the
real clock is only asked to wait for wakeups that are already set or are set by another thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from ratepilot.clock import Clock, FakeClock, SystemClock, Wakeup, any_of

REAL_BOUND = 10.0  # real seconds a test waits for another thread before failing (never reached when it works)


def test_a_wakeup_stays_set_until_cleared() -> None:
    w = Wakeup()
    assert not w.is_set()
    w.set()
    w.set()  # idempotent
    assert w.is_set()
    w.clear()
    assert not w.is_set()


@pytest.mark.parametrize("autojump", [True, False])
def test_a_wakeup_set_before_the_wait_ends_it_at_once(autojump: bool) -> None:
    clock = FakeClock(start=0.0, autojump=autojump)
    w = Wakeup()
    w.set()
    assert clock.wait(w, 3600.0) is True
    assert clock.wait(w, None) is True
    assert clock.now() == 0.0 and clock.slept == []


def test_an_autojumping_wait_nobody_ends_runs_to_its_deadline_exactly() -> None:
    clock = FakeClock(start=0.0)
    assert clock.wait(Wakeup(), 0.25) is False
    assert clock.now() == 0.25 and clock.slept == [0.25]  # within one tick: one jump, like a sleep
    assert clock.wait(Wakeup(), 5.5) is False
    assert clock.now() == 5.75 and clock.slept[1:] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]  # tick by tick
    assert clock.wait(Wakeup(), 0.0) is False and clock.wait(Wakeup(), -1.0) is False
    assert clock.now() == 5.75


def test_an_autojumping_wait_ends_on_an_event_due_mid_wait_not_at_the_deadline(
    alarm_clock: Callable[[float, Callable[[], object]], FakeClock],
) -> None:
    w = Wakeup()
    clock = alarm_clock(10.0, w.set)
    assert clock.wait(w, 3600.0) is True
    assert clock.now() == 10.0


async def test_an_autojumping_async_wait_ends_on_an_event_due_mid_wait(
    alarm_clock: Callable[[float, Callable[[], object]], FakeClock],
) -> None:
    w = Wakeup()
    clock = alarm_clock(10.0, w.set)
    assert await clock.wait_async(w, 3600.0) is True
    assert clock.now() == 10.0
    assert await clock.wait_async(Wakeup(), 2.5) is False
    assert clock.now() == 12.5


def test_an_autojumping_wait_gives_another_thread_the_time_to_set_the_wakeup() -> None:
    # No deadline: only the other thread can end the wait. Between ticks the waiter gives real time to others.
    clock = FakeClock(start=0.0)
    w = Wakeup()
    setter = threading.Thread(target=w.set)
    setter.start()
    assert clock.wait(w, None) is True
    setter.join(REAL_BOUND)


class Watched(Wakeup):
    """A wakeup that tells when a wait has begun on it (a clock listens once its deadline is fixed)."""

    def __init__(self) -> None:
        super().__init__()
        self.listened = threading.Event()

    def listen(self, notify: Callable[[], object]) -> bool:
        already = super().listen(notify)
        self.listened.set()
        return already


def test_a_wait_on_a_fake_clock_that_does_not_jump_ends_on_the_wakeup_or_when_advanced() -> None:
    clock = FakeClock(start=0.0, autojump=False)
    woken, timed_out = Wakeup(), Watched()
    results: dict[str, bool] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("woken", clock.wait(woken, 60.0))),
        threading.Thread(target=lambda: results.__setitem__("timed_out", clock.wait(timed_out, 60.0))),
    ]
    for t in threads:
        t.start()
    woken.set()  # ends the first wait without any time passing
    threads[0].join(REAL_BOUND)
    assert results == {"woken": True} and clock.now() == 0.0
    assert timed_out.listened.wait(REAL_BOUND)  # the other waits from time 0, until time 60
    clock.advance(60.0)
    threads[1].join(REAL_BOUND)
    assert results == {"woken": True, "timed_out": False}


async def test_an_async_wait_on_a_fake_clock_that_does_not_jump() -> None:
    clock = FakeClock(start=0.0, autojump=False)
    woken, timed_out = Wakeup(), Wakeup()
    first = asyncio.create_task(clock.wait_async(woken, 60.0))
    second = asyncio.create_task(clock.wait_async(timed_out, 60.0))
    forever = asyncio.create_task(clock.wait_async(Wakeup(), None))
    await asyncio.sleep(0)
    await asyncio.to_thread(woken.set)  # from another thread, as a webhook receiver does
    assert await asyncio.wait_for(first, REAL_BOUND) is True and clock.now() == 0.0
    clock.advance(59.0)
    await asyncio.sleep(0)
    assert not second.done()
    clock.advance(1.0)
    assert await asyncio.wait_for(second, REAL_BOUND) is False
    clock.advance(1e9)
    await asyncio.sleep(0)
    assert not forever.done()  # no deadline: only a wakeup ends it
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever


@pytest.mark.parametrize("clock", [SystemClock(), FakeClock(autojump=False)], ids=["system", "fake"])
def test_a_wakeup_set_by_another_thread_ends_a_long_wait(clock: Clock) -> None:
    w = Wakeup()
    entered = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        entered.set()
        result.append(clock.wait(w, 3600.0))

    t = threading.Thread(target=waiter)
    t.start()
    assert entered.wait(REAL_BOUND)
    w.set()
    t.join(REAL_BOUND)
    assert result == [True]


@pytest.mark.parametrize("clock", [SystemClock(), FakeClock(autojump=False)], ids=["system", "fake"])
async def test_a_wakeup_set_by_another_thread_ends_a_long_async_wait(clock: Clock) -> None:
    w = Wakeup()
    task = asyncio.create_task(clock.wait_async(w, 3600.0))
    await asyncio.sleep(0)
    await asyncio.to_thread(w.set)
    assert await asyncio.wait_for(task, REAL_BOUND) is True


async def test_the_system_clock_does_not_wait_when_there_is_nothing_to_wait_for() -> None:
    clock = SystemClock()
    assert clock.wait(Wakeup(), 0.0) is False and clock.wait(Wakeup(), -5.0) is False
    assert await clock.wait_async(Wakeup(), 0.0) is False
    done = Wakeup()
    done.set()
    assert clock.wait(done, None) is True and await clock.wait_async(done, None) is True


def test_any_of_is_set_by_the_first_and_stops_following_them_after() -> None:
    a, b = Wakeup(), Wakeup()
    with any_of(a, b) as either:
        assert not either.is_set()
        b.set()
        assert either.is_set()
    b.clear()
    a.set()
    assert either.is_set()  # still set: nothing clears it
    assert a._listeners == [] and b._listeners == []  # it no longer follows them
    with any_of(Wakeup(), a) as already:
        assert already.is_set()  # one was set before the block
    with any_of() as nothing:
        assert FakeClock().wait(nothing, 1.0) is False


def test_fake_clock_wait_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="wait_tick"):
        FakeClock(wait_tick=0.0)
    with pytest.raises(ValueError, match="wait_idle"):
        FakeClock(wait_idle=-1.0)
