"""The shared foundation: GCRA arithmetic and the injected clock."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from ratepilot.clock import FakeClock
from ratepilot.limits.gcra import Bucket, Rate, admit_all


def test_bucket_starts_full_and_refills_continuously() -> None:
    b = Bucket(Rate(60, 60.0))
    now = 0.0
    for _ in range(60):
        assert b.consume(1, now).allowed
    refused = b.consume(1, now)
    assert not refused.allowed and refused.wait == pytest.approx(1.0)
    assert b.remaining(now) == pytest.approx(0)
    assert b.reset(now) == pytest.approx(60.0)
    assert b.consume(1, now + 1.0).allowed  # one request refills per second


def test_bucket_headers_view_matches_api_example() -> None:
    # 60 RPM with 59 remaining shows reset 1s, as in openai-behaviour.md.
    b = Bucket(Rate(60, 60.0))
    b.consume(1, 0.0)
    assert math.floor(b.remaining(0.0)) == 59
    assert b.reset(0.0) == pytest.approx(1.0)


def test_request_larger_than_limit_never_fits() -> None:
    d = Bucket(Rate(100, 60.0)).check(101, 0.0)
    assert not d.allowed and d.wait == math.inf


def test_admit_all_is_all_or_nothing() -> None:
    rpm, tpm = Bucket(Rate(10, 60.0)), Bucket(Rate(100, 60.0))
    assert admit_all([(rpm, 1), (tpm, 90)], 0.0)[0]
    allowed, wait, index = admit_all([(rpm, 1), (tpm, 20)], 0.0)
    assert not allowed and index == 1 and wait == pytest.approx(10 * 0.6)
    assert rpm.remaining(0.0) == pytest.approx(9)  # the refused request charged nothing


def test_set_remaining_adopts_server_view_and_force_refunds() -> None:
    b = Bucket(Rate(1000, 60.0))
    b.set_remaining(400, 10.0)
    assert b.remaining(10.0) == pytest.approx(400)
    b.force(-100, 10.0)
    assert b.remaining(10.0) == pytest.approx(500)
    b.force(-10_000, 10.0)
    assert b.remaining(10.0) == pytest.approx(1000)  # never more than full


def test_rate_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Rate(0, 60)
    with pytest.raises(ValueError):
        Rate(10, math.inf)


def test_fake_clock_autojump_records_sleeps() -> None:
    c = FakeClock(start=0.0)
    c.sleep(2.5)
    assert c.now() == 2.5 and c.slept == [2.5]
    assert c.wall() - c.now() == pytest.approx(1_767_225_600.0)


async def test_fake_clock_async_waiters_wake_in_deadline_order() -> None:
    c = FakeClock(start=0.0, autojump=False)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await c.asleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("early", 1))]
    await asyncio.sleep(0)
    c.advance(1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert woke == ["early"]
    c.advance(4)
    await asyncio.gather(*tasks)
    assert woke == ["early", "late"]


def test_fake_clock_threads_block_until_advanced() -> None:
    c = FakeClock(start=0.0, autojump=False)
    done = threading.Event()

    def worker() -> None:
        c.sleep(3)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    assert not done.wait(0.01)
    c.advance(3)
    t.join(timeout=5)
    assert done.is_set()
    with pytest.raises(ValueError):
        c.advance(-1)
