"""One test body per behaviour, run against every store (memory, SQLite, real Redis) on a fake clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from limits_helpers import REDIS_URL, dim, headers, quiesce

from ratepilot.clock import FakeClock, SystemClock, Wakeup
from ratepilot.limits import Cost, CostTooLarge, Grant, Limiter, Priority, Scope, key_id_for
from ratepilot.limits.limiter import PROBE_GRACE
from ratepilot.protocol.errors import LimitKind, classify, rate_limit_error
from ratepilot.protocol.headers import DimensionState, RateLimitHeaders
from ratepilot.retry import server_wait_hint

SCOPE = Scope(key_id_for("sk-test-limiter"), "gpt-4o-mini")


@pytest.fixture
def limiter(store_uri: str, clock: FakeClock) -> Iterator[Limiter]:
    # These tests are about the minute bucket itself: the burst allowance starts at the whole window. The
    # learned burst (slow start, cuts) has its own tests in test_burst.py.
    lim = Limiter(store_uri, clock=clock, start_burst=60.0)
    yield lim
    lim.close()


def learn(lim: Limiter, rpm: tuple[int, int] | None = (60, 59), tpm: tuple[int, int] | None = (10_000, 9_900)) -> None:
    """Send the probe and observe its response."""
    g = lim.acquire(SCOPE, Cost(1, 100))
    assert g.probe
    lim.observe(SCOPE, headers(rpm, tpm), sent_at=g.granted_at, grant=g)
    lim.settle(g, 100)


def remaining(lim: Limiter, dim: str) -> float:
    return lim.state(SCOPE)[dim].remaining


def test_scope_key_is_never_the_api_key() -> None:
    with pytest.raises(ValueError, match="hash of the API key"):
        Scope("sk-test-secret")
    assert "sk-" not in key_id_for("sk-test-secret")


def test_unknown_scope_admits_one_probe_until_headers(limiter: Limiter, clock: FakeClock) -> None:
    assert limiter.state(SCOPE) == {}
    probe = limiter.acquire(SCOPE, Cost(1, 50))
    assert probe.probe
    assert limiter._try(SCOPE, Cost(1, 50), Priority.NORMAL).probe  # type: ignore[union-attr]
    limiter.observe(SCOPE, headers((100, 99), (20_000, 19_950)), sent_at=probe.granted_at, grant=probe)
    limiter.settle(probe, 50)
    after = limiter.acquire(SCOPE, Cost(1, 50))
    assert not after.probe
    assert clock.now() == 1_000.0  # no waiting at all once learned


def test_a_settled_probe_keeps_its_lease_until_its_headers_are_observed(limiter: Limiter, clock: FakeClock) -> None:
    # Settle comes before observe (the client's order). In between, a second request must not go out as an
    # uncharged probe: the server would count its tokens and the limiter would not (a 429 later).
    probe = limiter.acquire(SCOPE, Cost(1, 50))
    limiter.settle(probe, 40)
    wait = limiter._try(SCOPE, Cost(1, 50), Priority.NORMAL)
    assert not isinstance(wait, Grant) and wait.probe
    limiter.observe(SCOPE, headers((100, 99), (20_000, 19_960)), sent_at=probe.granted_at, grant=probe)
    after = limiter.acquire(SCOPE, Cost(1, 50))
    assert not after.probe and all(after.charged[:2])


def test_a_probe_with_no_response_to_observe_frees_the_scope_at_once(limiter: Limiter, clock: FakeClock) -> None:
    probe = limiter.acquire(SCOPE, Cost(1, 50))
    limiter.settle(probe, None, headers_follow=False)  # a read timeout: no headers will come
    start = clock.now()
    second = limiter.acquire(SCOPE, Cost(1, 50))
    assert second.probe and clock.now() == start


def test_a_late_settle_of_an_earlier_probe_leaves_the_next_probes_lease(limiter: Limiter, clock: FakeClock) -> None:
    # A streamed probe: its headers (none usable here) are observed first, which frees the scope for a new
    # probe; its settle at the end of the stream must not cut that new probe's lease.
    first = limiter.acquire(SCOPE, Cost(1, 50))
    limiter.observe(SCOPE, RateLimitHeaders(None, None), sent_at=first.granted_at, grant=first)
    clock.advance(0.5)  # a lease is told apart by its expiry, so by the (store) time it was granted
    second = limiter.acquire(SCOPE, Cost(1, 50))
    assert second.probe
    limiter.settle(first, 40)
    wait = limiter._try(SCOPE, Cost(1, 50), Priority.NORMAL)
    assert not isinstance(wait, Grant) and wait.probe and wait.seconds > PROBE_GRACE


def test_a_settled_probe_never_observed_frees_the_scope_after_the_grace(limiter: Limiter, clock: FakeClock) -> None:
    probe = limiter.acquire(SCOPE, Cost(1, 50))
    limiter.settle(probe, None)  # a caller that settles but never observes
    wait = limiter._try(SCOPE, Cost(1, 50), Priority.NORMAL)
    assert not isinstance(wait, Grant) and wait.probe and wait.seconds == pytest.approx(PROBE_GRACE)
    second = limiter.acquire(SCOPE, Cost(1, 50))  # waits out the grace (on the fake clock), never forever
    assert second.probe
    assert clock.now() >= 1_000.0 + PROBE_GRACE - 1e-9


async def test_async_waiter_waits_for_the_probe_response(limiter: Limiter, clock: FakeClock) -> None:
    probe = await limiter.aacquire(SCOPE, Cost(1, 10))
    second = asyncio.create_task(limiter.aacquire(SCOPE, Cost(1, 10)))
    await quiesce(limiter)
    assert not second.done()
    limiter.observe(SCOPE, headers((100, 99), (20_000, 19_990)), sent_at=probe.granted_at, grant=probe)
    limiter.settle(probe, 10)
    grant = await asyncio.wait_for(second, timeout=5)
    assert not grant.probe


def test_learns_limits_and_remaining_from_first_response(limiter: Limiter) -> None:
    learn(limiter, (60, 50), (10_000, 4_000))
    state = limiter.state(SCOPE)
    assert state["rpm"].limit == 60 and state["rpm"].server_limit == 60
    assert state["rpm"].remaining == pytest.approx(50)
    assert state["tpm"].remaining == pytest.approx(4_000)
    assert state["rpm"].reset == pytest.approx(10.0)


def test_requests_per_minute_enforced(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (60, 59), (1_000_000, 999_900))
    start = clock.now()
    for _ in range(59):
        limiter.settle(limiter.acquire(SCOPE, Cost(1, 1)), 1)
    assert clock.now() == start  # the burst left in the bucket
    for _ in range(10):
        limiter.settle(limiter.acquire(SCOPE, Cost(1, 1)), 1)
    assert clock.now() - start == pytest.approx(10.0)  # then one per second


def test_all_dimensions_reserved_atomically(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (100, 99), (1_000, 950))
    limiter.acquire(SCOPE, Cost(1, 900))
    before = limiter.state(SCOPE)
    decision = limiter._try(SCOPE, Cost(1, 100), Priority.NORMAL)  # tokens refuse, requests would fit
    assert not hasattr(decision, "seq")
    after = limiter.state(SCOPE)
    assert after["rpm"].remaining == pytest.approx(before["rpm"].remaining)  # nothing charged anywhere
    assert after["tpm"].remaining == pytest.approx(before["tpm"].remaining)
    limiter.acquire(SCOPE, Cost(1, 100))
    assert clock.now() - 1_000.0 == pytest.approx(50 * 60 / 1_000)  # waited for 50 tokens to refill


def test_settle_refunds_and_charges_the_difference(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    g = limiter.acquire(SCOPE, Cost(1, 1_000))
    assert remaining(limiter, "tpm") == pytest.approx(8_900)
    limiter.settle(g, 400)
    assert remaining(limiter, "tpm") == pytest.approx(9_500)
    g2 = limiter.acquire(SCOPE, Cost(1, 100))
    limiter.settle(g2, 600)  # used more than reserved: charged past the estimate
    assert remaining(limiter, "tpm") == pytest.approx(8_900)
    limiter.settle(g2, 0)  # a second settle is ignored
    assert remaining(limiter, "tpm") == pytest.approx(8_900)


def test_cancel_gives_everything_back(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    before = limiter.state(SCOPE)
    g = limiter.acquire(SCOPE, Cost(1, 2_000))
    limiter.cancel(g)
    limiter.cancel(g)  # idempotent
    after = limiter.state(SCOPE)
    assert after["rpm"].remaining == pytest.approx(before["rpm"].remaining)
    assert after["tpm"].remaining == pytest.approx(before["tpm"].remaining)


def test_foreign_usage_in_headers_is_absorbed(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    g = limiter.acquire(SCOPE, Cost(1, 100))  # we think 98 requests / 9_800 tokens remain
    # Someone else used 20 requests and 3_000 tokens of the same key meanwhile.
    limiter.observe(SCOPE, headers((100, 78), (10_000, 6_800)), sent_at=g.granted_at, grant=g)
    assert remaining(limiter, "rpm") == pytest.approx(78)
    assert remaining(limiter, "tpm") == pytest.approx(6_800)


def test_requests_granted_after_the_observed_one_still_count(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    g = limiter.acquire(SCOPE, Cost(1, 100))
    for _ in range(10):  # sent while g's response was in flight: the server had not seen them
        limiter.acquire(SCOPE, Cost(1, 100))
    limiter.observe(SCOPE, headers((100, 98), (10_000, 9_800)), sent_at=g.granted_at, grant=g)
    assert remaining(limiter, "rpm") == pytest.approx(88)
    assert remaining(limiter, "tpm") == pytest.approx(8_800)
    # Observing by sent_at alone finds the same grant.
    limiter.observe(SCOPE, headers((100, 98), (10_000, 9_800)), sent_at=g.granted_at)
    assert remaining(limiter, "rpm") == pytest.approx(88)


def test_the_same_foreign_usage_is_not_counted_twice(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    a = limiter.acquire(SCOPE, Cost(1, 100))
    b = limiter.acquire(SCOPE, Cost(1, 100))
    limiter.observe(SCOPE, headers((100, 88), (10_000, 9_800)), sent_at=a.granted_at, grant=a)  # 10 foreign
    limiter.observe(SCOPE, headers((100, 87), (10_000, 9_700)), sent_at=b.granted_at, grant=b)  # same 10
    assert remaining(limiter, "rpm") == pytest.approx(87)
    # A late response of a's, showing an older, emptier bucket, neither re-adds nor gives anything back.
    limiter.observe(SCOPE, headers((100, 95), (10_000, 9_900)), sent_at=a.granted_at, grant=a)
    assert remaining(limiter, "rpm") == pytest.approx(87)
    # But no report, however late, is ever believed to show less usage than the server has.
    limiter.observe(SCOPE, headers((100, 50), (10_000, 1_000)), sent_at=a.granted_at, grant=a)
    assert remaining(limiter, "rpm") == pytest.approx(50)


def test_limit_change_mid_run_is_adopted(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    g = limiter.acquire(SCOPE, Cost(1, 100))
    limiter.observe(SCOPE, headers((500, 498), (50_000, 49_800)), sent_at=g.granted_at, grant=g)
    state = limiter.state(SCOPE)
    assert state["rpm"].limit == 500 and state["tpm"].limit == 50_000
    assert state["rpm"].remaining == pytest.approx(498)
    g = limiter.acquire(SCOPE, Cost(1, 100))
    limiter.observe(SCOPE, headers((20, 17), (50_000, 49_700)), sent_at=g.granted_at, grant=g)  # lowered
    assert limiter.state(SCOPE)["rpm"].limit == 20
    assert limiter.state(SCOPE)["rpm"].remaining == pytest.approx(17)


def test_a_cut_limit_takes_the_servers_count_not_ours_rescaled(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (100, 99), (1_000_000, 999_900))
    grants = [limiter.acquire(SCOPE, Cost(1, 10)) for _ in range(51)]  # 52 requests in use of 100
    # The limit is cut to 20; the server counts 19 in use (its own bucket, its own scale): one fits in 3 s.
    limiter.observe(SCOPE, headers((20, 1), (1_000_000, 999_000)), sent_at=grants[-1].granted_at, grant=grants[-1])
    start = clock.now()
    limiter.acquire(SCOPE, Cost(1, 10))
    assert clock.now() - start <= 3.0 + 1e-6  # not the ~100 s that 52 units rescaled to a limit of 20 would take


def test_daily_limit_is_recognised_from_its_long_reset(limiter: Limiter, clock: FakeClock) -> None:
    g = limiter.acquire(SCOPE, Cost(1, 10))
    # 200 requests per day, 1 used: reset 432 s; the minute limit is not binding so not reported.
    limiter.observe(SCOPE, headers(rpd=(200, 199), tpm=(10_000, 9_990)), sent_at=g.granted_at, grant=g)
    state = limiter.state(SCOPE)
    assert "rpm" not in state and state["rpd"].limit == 200 and state["rpd"].window == 86_400
    assert state["rpd"].remaining == pytest.approx(199)
    for _ in range(199):
        limiter.acquire(SCOPE, Cost(1, 1))
    start = clock.now()
    limiter.acquire(SCOPE, Cost(1, 1))
    assert clock.now() - start == pytest.approx(432.0)


def test_missing_headers_keep_state_and_eventually_stop_probing(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    before = limiter.state(SCOPE)
    g = limiter.acquire(SCOPE, Cost(1, 100))
    limiter.observe(SCOPE, {}, sent_at=g.granted_at, grant=g)  # a response without headers changes nothing
    assert limiter.state(SCOPE)["rpm"].remaining == pytest.approx(before["rpm"].remaining - 1)

    other = Scope(SCOPE.key_id, "no-headers-model")
    for _ in range(3):  # probes whose responses never carry headers
        p = limiter.acquire(other, Cost(1, 1))
        assert p.probe
        limiter.observe(other, RateLimitHeaders(None, None), sent_at=p.granted_at, grant=p)
        limiter.settle(p, 1)
    grants = [limiter.acquire(other, Cost(1, 1)) for _ in range(5)]  # then: no more one-at-a-time
    assert not any(g.probe for g in grants)


def test_a_ceiling_on_both_minute_limits_needs_no_probe(store_uri: str, clock: FakeClock) -> None:
    # A limiter used on its own terms (never observing): the configured limits are enforced from the start.
    with Limiter(store_uri, clock=clock, ceiling={"rpm": 60, "tpm": 6_000}, start_burst=60.0) as lim:
        start = clock.now()
        grants = [lim.acquire(SCOPE, Cost(1, 100)) for _ in range(90)]
        assert not any(g.probe for g in grants)
        assert clock.now() - start == pytest.approx(30.0, abs=1.01)


def test_a_ceiling_is_enforced_when_the_server_never_sends_headers(store_uri: str, clock: FakeClock) -> None:
    with Limiter(store_uri, clock=clock, ceiling={"rpm": 60}, start_burst=60.0) as lim:
        for _ in range(3):  # probes whose responses never carry headers
            p = lim.acquire(SCOPE, Cost(1, 1))
            assert p.probe
            lim.observe(SCOPE, RateLimitHeaders(None, None), sent_at=p.granted_at, grant=p)
            lim.settle(p, 1)
        start = clock.now()
        for _ in range(60 + 30):
            lim.acquire(SCOPE, Cost(1, 1))
        # 60 at once (the bucket starts full), then one per second: the ceiling holds without any headers
        assert clock.now() - start == pytest.approx(30.0, abs=1.01)


def test_daily_token_and_project_token_limits_are_learned_and_enforced(limiter: Limiter, clock: FakeClock) -> None:
    g = limiter.acquire(SCOPE, Cost(1, 10))
    project = DimensionState(2_000, 1_990, 0.3)  # a per-minute project budget: 2,000 tokens, 10 used
    reported = RateLimitHeaders(dim(1_000, 999), dim(100_000, 99_990, window=86_400.0), project)
    limiter.observe(SCOPE, reported, sent_at=g.granted_at, grant=g)
    state = limiter.state(SCOPE)
    assert state["tpd"].limit == 100_000 and state["tpd"].window == 86_400 and "tpm" not in state
    assert state["ptpm"].limit == 2_000 and state["ptpm"].remaining == pytest.approx(1_990)
    start = clock.now()
    for _ in range(2):
        limiter.acquire(SCOPE, Cost(1, 995))  # two fit in the project's 1,990 left; the third waits
    assert clock.now() - start == pytest.approx(0.0, abs=1e-6)
    limiter.acquire(SCOPE, Cost(1, 995))
    assert clock.now() - start == pytest.approx(995 * 60 / 2_000, rel=1e-3)


async def test_a_large_head_is_not_overtaken_by_small_waiters(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (1_000, 1_000), (1_000, 1_000))  # 1,000 tokens a minute, all free
    await limiter.aacquire(SCOPE, Cost(1, 700))  # 300 left
    order: list[str] = []

    async def one(name: str, tokens: int) -> None:
        await limiter.aacquire(SCOPE, Cost(1, tokens))
        order.append(name)

    clock.autojump = False
    tasks = [asyncio.create_task(one("large", 800))]  # must wait; the small ones would fit now
    await quiesce(limiter)
    tasks += [asyncio.create_task(one(f"small{i}", 10)) for i in range(3)]
    await quiesce(limiter)
    assert order == []  # FIFO: nothing overtakes the head while it waits
    while not all(t.done() for t in tasks):
        clock.advance(1.0)
        await quiesce(limiter)
    assert order == ["large", "small0", "small1", "small2"]


def test_penalty_after_429_blocks_the_scope(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    body = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.RPD, 2000, 2000, 1, 43.2)
    wait = server_wait_hint(classify(429, body), {})
    assert wait == pytest.approx(43.2)
    assert server_wait_hint(classify(429, body), {"retry-after": "20"}) == 20
    limiter.penalize(SCOPE, wait)
    start = clock.now()
    limiter.acquire(SCOPE, Cost(1, 1))
    assert clock.now() - start == pytest.approx(43.2)


def test_ceiling_and_safety_margin(store_uri: str, clock: FakeClock) -> None:
    with Limiter(store_uri, clock=clock, ceiling={"rpm": 30}, safety_margin=0.1, start_burst=60.0) as lim:
        g = lim.acquire(SCOPE, Cost(1, 10))
        # Even under a ceiling the first request probes: a ceiling on requests says nothing of the token limit,
        # which a burst of large requests sent before any headers would overrun.
        assert g.probe
        wait = lim._try(SCOPE, Cost(1, 5_000), Priority.NORMAL)
        assert not isinstance(wait, Grant) and wait.probe
        lim.observe(SCOPE, headers((100, 99), (10_000, 9_990)), sent_at=g.granted_at, grant=g)
        state = lim.state(SCOPE)
        assert state["rpm"].limit == 30  # the ceiling caps the server's 100
        assert state["rpm"].server_limit == 100
        assert state["tpm"].limit == pytest.approx(9_000)  # 10% margin
    with pytest.raises(ValueError, match="unknown limit 'rps'"):
        Limiter("memory://", ceiling={"rps": 1})


async def test_fifo_among_async_waiters(limiter: Limiter) -> None:
    learn(limiter, (60, 60), (1_000_000, 1_000_000))
    for _ in range(59):
        await limiter.aacquire(SCOPE, Cost(1, 1))
    order: list[int] = []

    async def one(i: int) -> None:
        await limiter.aacquire(SCOPE, Cost(1, 1))
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(20)))
    assert order == list(range(20))


async def test_low_priority_never_overtakes_normal(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (60, 60), (1_000_000, 1_000_000))
    for _ in range(59):
        await limiter.aacquire(SCOPE, Cost(1, 1))
    order: list[str] = []

    async def one(name: str, priority: Priority) -> None:
        await limiter.aacquire(SCOPE, Cost(1, 1), priority)
        order.append(name)

    clock.autojump = False  # time moves only when the test says, so all waiters are queued first
    tasks = [asyncio.create_task(one(f"low{i}", Priority.LOW)) for i in range(3)]
    await quiesce(limiter)
    tasks += [asyncio.create_task(one(f"normal{i}", Priority.NORMAL)) for i in range(3)]
    await quiesce(limiter)
    while not all(t.done() for t in tasks):
        clock.advance(0.5)
        await quiesce(limiter)
    assert order[:3] == ["normal0", "normal1", "normal2"]
    assert sorted(order[3:]) == ["low0", "low1", "low2"]


def test_low_priority_leaves_headroom(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (100, 100), (1_000_000, 1_000_000))
    for _ in range(89):
        limiter.acquire(SCOPE, Cost(1, 1), Priority.LOW)
    start = clock.now()
    limiter.acquire(SCOPE, Cost(1, 1), Priority.NORMAL)  # NORMAL may use the last 10%
    assert clock.now() == start
    limiter.acquire(SCOPE, Cost(1, 1), Priority.LOW)  # LOW waits until 10% is free again
    assert clock.now() > start


async def test_cancelled_waiter_gives_its_place_back(limiter: Limiter, clock: FakeClock) -> None:
    clock.autojump = False
    learn_clock_free = limiter.acquire(SCOPE, Cost(1, 1))  # the probe (no waiting involved)
    limiter.observe(SCOPE, headers((60, 59), (1_000_000, 999_999)), sent_at=clock.now(), grant=learn_clock_free)
    for _ in range(59):
        await limiter.aacquire(SCOPE, Cost(1, 1))
    waiting = asyncio.create_task(limiter.aacquire(SCOPE, Cost(1, 1)))
    behind = asyncio.create_task(limiter.aacquire(SCOPE, Cost(1, 1)))
    await quiesce(limiter)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    clock.advance(1.0)
    grant = await asyncio.wait_for(behind, timeout=5)
    assert grant.seq == 61  # the cancelled waiter reserved nothing
    assert remaining(limiter, "rpm") == pytest.approx(0, abs=1e-6)


class _TellsWhenWaiting(FakeClock):
    """A FakeClock that moves only when told (no autojump) and says when a waiter begins to wait on it."""

    def __init__(self) -> None:
        super().__init__(autojump=False)
        self.waiting = threading.Event()

    def wait(self, wakeup: Wakeup, timeout: float | None) -> bool:
        self.waiting.set()
        return super().wait(wakeup, timeout)


def test_a_refund_ends_the_heads_wait_on_a_fake_clock_as_on_the_real_one(store_uri: str) -> None:
    # The head waits on clock.wait whatever the clock: a refund wakes it here exactly as in production (a fake
    # clock used to make it sleep the whole wait through). Time never moves: only the wake-up can end the wait.
    clock = _TellsWhenWaiting()
    with Limiter(store_uri, clock=clock, start_burst=60.0) as lim:
        learn(lim, (60, 60), (1_000_000, 1_000_000))
        grants = [lim.acquire(SCOPE, Cost(1, 1)) for _ in range(60)]  # the minute is spent
        got: list[Grant] = []
        waiter = threading.Thread(target=lambda: got.append(lim.acquire(SCOPE, Cost(1, 1))))
        waiter.start()
        assert clock.waiting.wait(10)
        lim.cancel(grants[-1])  # never sent: its request comes back at once
        waiter.join(10)
        assert len(got) == 1 and clock.now() == 1_000.0


async def test_a_refund_ends_an_async_heads_wait_on_a_fake_clock(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (60, 60), (1_000_000, 1_000_000))
    grants = [await limiter.aacquire(SCOPE, Cost(1, 1)) for _ in range(60)]
    clock.autojump = False
    waiting = asyncio.create_task(limiter.aacquire(SCOPE, Cost(1, 1)))
    await quiesce(limiter)
    assert not waiting.done()
    limiter.cancel(grants[-1])
    await asyncio.wait_for(waiting, timeout=10)
    assert clock.now() == 1_000.0


def test_threads_share_the_limit(limiter: Limiter, clock: FakeClock) -> None:
    learn(limiter, (600, 600), (1_000_000, 1_000_000))
    grants: list[int] = []

    def worker() -> None:
        for _ in range(50):
            grants.append(limiter.acquire(SCOPE, Cost(1, 1)).seq)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(grants) == 200 and len(set(grants)) == 200
    assert remaining(limiter, "rpm") >= 400 - 1e-6


def test_a_cost_over_the_server_limit_raises_instead_of_waiting(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    with pytest.raises(CostTooLarge, match="10001 tokens exceeds the server's limit"):
        limiter.acquire(SCOPE, Cost(1, 10_001))
    limiter.acquire(SCOPE, Cost(1, 9_000))  # the queue is free again; nothing was reserved


def test_slot_cancels_on_error(limiter: Limiter) -> None:
    learn(limiter, (100, 99), (10_000, 9_900))
    before = remaining(limiter, "tpm")
    with pytest.raises(RuntimeError), limiter.slot(SCOPE, Cost(1, 500)):
        raise RuntimeError("send failed")
    assert remaining(limiter, "tpm") == pytest.approx(before)


def test_raw_header_strings_daily_limit_from_the_docs(limiter: Limiter) -> None:
    """The documented example: 10,000 requests/day shows as reset-requests 8.64s after one request."""
    g = limiter.acquire(SCOPE, Cost(1, 10))
    raw = {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "8.64s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149990",
        "x-ratelimit-reset-tokens": "4ms",
    }
    limiter.observe(SCOPE, raw, sent_at=g.granted_at, grant=g)
    state = limiter.state(SCOPE)
    assert state["rpd"].limit == 10_000 and state["rpd"].window == 86_400
    assert state["tpm"].limit == 150_000 and state["tpm"].window == 60


def test_real_clock_probe_waiter_is_woken_by_the_response() -> None:
    """On the system clock a thread waiting for the probe sleeps on a condition, and the response wakes it
    at once (the probe lease is a minute: a timeout here would mean the wake-up was lost)."""
    with Limiter("memory://") as lim:
        probe = lim.acquire(SCOPE, Cost(1, 10))
        got: list[bool] = []
        waiter = threading.Thread(target=lambda: got.append(lim.acquire(SCOPE, Cost(1, 10)).probe))
        waiter.start()
        lim.observe(SCOPE, headers((100, 99), (10_000, 9_990)), sent_at=probe.granted_at, grant=probe)
        lim.settle(probe, 10)
        waiter.join(timeout=10)
        assert got == [False]


async def test_real_clock_async_probe_waiter_is_woken_by_the_response() -> None:
    with Limiter("memory://") as lim:
        probe = await lim.aacquire(SCOPE, Cost(1, 10))
        second = asyncio.create_task(lim.aacquire(SCOPE, Cost(1, 10)))
        await asyncio.sleep(0)
        lim.observe(SCOPE, headers((100, 99), (10_000, 9_990)), sent_at=probe.granted_at, grant=probe)
        lim.settle(probe, 10)
        grant = await asyncio.wait_for(second, timeout=10)
        assert not grant.probe


class SkewedClock(SystemClock):
    """A host whose clock is a day ahead of everyone else's."""

    def now(self) -> float:
        return super().now() + 86_400.0


def test_redis_time_is_the_clock_so_host_clocks_do_not_matter(redis_prefix: str) -> None:
    uri = f"{REDIS_URL}?prefix={redis_prefix}"
    with Limiter(uri, start_burst=60.0) as here, Limiter(uri, clock=SkewedClock(), start_burst=60.0) as there:
        probe = here.acquire(SCOPE, Cost(1, 10))
        here.observe(SCOPE, headers((100, 99), (1_000_000, 999_990)), sent_at=probe.granted_at, grant=probe)
        here.settle(probe, 10)
        for _ in range(10):
            there.settle(there.acquire(SCOPE, Cost(1, 10)), 10)
            here.settle(here.acquire(SCOPE, Cost(1, 10)), 10)
        # A day of skew would have refilled (or frozen) the bucket; with Redis TIME both see the same one.
        seen_here, seen_there = here.state(SCOPE)["rpm"], there.state(SCOPE)["rpm"]
        assert seen_here.remaining == pytest.approx(79, abs=0.5)
        assert seen_there.remaining == pytest.approx(seen_here.remaining, abs=0.5)
