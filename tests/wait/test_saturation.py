"""Polling next to a runner that saturates the RPM limit: no 429 from polling, work keeps >= 95% of the limit.

The simulator is configured to charge polls (GETs naming no model, the org-wide ``*`` bucket) and the runner's
chat completions to the same request bucket: the worst case, where every poll is a request taken from the
work. Everything shares one FakeClock; the waiter's sleeps are filled with the runner's requests
(:class:`BusyClock`), so the two interleave deterministically and the runner keeps the limiter saturated
for the whole wait.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openai import OpenAI

from ratepilot.client import Pilot
from ratepilot.clock import FakeClock, Wakeup
from ratepilot.limits import Limiter
from ratepilot.poll import wait
from ratepilot.sim import PoolSpec, SimConfig, Simulator
from ratepilot.sim.longrun import configure

from .conftest import BATCH_TERMINAL, create_batch, longrun_for

RPM = 60
DURATION = 60.0  # a 1-minute batch next to 2 minutes of work: ~200 requests in all, fast enough


SHARED_SCOPE = {"gpt-4o-mini": "requests"}  # the model's calls share the scope of calls naming no model


class BusyClock:
    """The shared FakeClock, except that any wait is filled with the runner's requests while it has work left.

    Both the waiter (``wait(clock=...)``) and the pilot (its limiter's waits, e.g. a LOW poll waiting for a
    slot) sleep on it, which is what a concurrent runner does in reality: it keeps working meanwhile. The
    runner's own waits (re-entrant) sleep on the FakeClock itself.
    """

    def __init__(self, base: FakeClock, work: Callable[[], bool]) -> None:
        self.base, self.work = base, work
        self._inside = False
        self.busy = True  # the runner still has work

    def now(self) -> float:
        return self.base.now()

    def wall(self) -> float:
        return self.base.wall()

    def sleep(self, seconds: float) -> None:
        if self._inside:
            self.base.sleep(seconds)
            return
        end = self.base.now() + seconds
        self._inside = True
        try:
            while self.busy and self.base.now() < end:
                self.busy = self.work()
        finally:
            self._inside = False
        if self.base.now() < end:
            self.base.sleep(end - self.base.now())

    def wait(self, wakeup: Wakeup, timeout: float | None) -> bool:
        # A limiter waiting for a slot: filled with work like a sleep, ended early by the wakeup as on any clock.
        if self._inside or timeout is None:
            return self.base.wait(wakeup, timeout)
        end = self.base.now() + timeout
        self._inside = True
        try:
            while self.busy and self.base.now() < end and not wakeup.is_set():
                self.busy = self.work()
        finally:
            self._inside = False
        return self.base.wait(wakeup, max(0.0, end - self.base.now()))

    async def asleep(self, seconds: float) -> None:  # pragma: no cover - the sync driver is used here
        raise NotImplementedError

    async def wait_async(self, wakeup: Wakeup, timeout: float | None) -> bool:  # pragma: no cover - as asleep
        raise NotImplementedError


def run(
    strategy: str, duration: float, work_requests: int, pools: dict[str, str] | None = SHARED_SCOPE
) -> dict[str, Any]:
    clock = FakeClock()
    shared = (PoolSpec("*", ("gpt-4o-mini",)),)  # polls and work draw on one bucket
    with Simulator(SimConfig(rpm=RPM, tpm=None, pools=shared), clock=clock) as sim:
        configure(sim.state, longrun_for(duration, 20))
        done = [0, 0.0]  # requests of work done, clock time when the last one finished

        def one_request() -> bool:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "real work"}], max_tokens=5
            )
            done[0] += 1
            done[1] = clock.now()
            return done[0] < work_requests

        busy = BusyClock(clock, one_request)
        # The server charges polls and gpt-4o-mini to one bucket; telling the pilot so puts them in one limiter
        # scope, where a LOW-priority poll waits behind any NORMAL request (without it, see the README note).
        # (The NORMAL-priority fixed loop would head the limiter queue while the runner, nested in the same
        # thread, waits behind it; there the pilot sleeps on the plain FakeClock instead.)
        # The work is a nested, one-at-a-time loop inside the clock's sleeps: the limiter trusts the whole minute
        # from the start (start_burst=60), as the capacity computed below assumes.
        pclock = busy if strategy == "ratepilot" else clock
        pilot = Pilot(clock=pclock, pools=pools, limiter=Limiter(clock=pclock, start_burst=60.0))
        with OpenAI(base_url=sim.base_url, api_key="sk-test-saturation", max_retries=0) as raw:
            client = pilot.wrap(raw)
            batch = create_batch(client, 20)
            setup_requests = sim.stats()["requests"]["total"]  # file upload + batch create, from the full bucket
            start = clock.now()
            if strategy == "ratepilot":
                final = wait(client, batch, clock=busy)
            else:  # the usual loop: look every second, at normal priority
                while (final := client.batches.retrieve(batch.id)).status not in BATCH_TERMINAL:
                    busy.sleep(1.0)
            detected = clock.now() - start
            while busy.busy:  # the runner finishes its work after the wait
                busy.sleep(60.0)
            stats = sim.stats()
    assert final.status == "completed"
    worked = done[1] - start  # how long the runner took for its work
    capacity = RPM - setup_requests + RPM * worked / 60  # the bucket's contents at start, then its refill
    return {
        "work_share": done[0] / capacity,
        "polls": stats["requests"]["by_endpoint"]["/v1/batches/{id}"],
        "rate_limited": stats["rate_limited"]["total"],
        "detected": detected,
        "worked": worked,
    }


def test_adaptive_polls_cost_no_429_and_leave_the_work_its_limit() -> None:
    # The runner has ~2 minutes of work at the limit; a 1-minute batch is waited on meanwhile.
    r = run("ratepilot", DURATION, work_requests=120)
    assert r["rate_limited"] == 0, r  # not one 429, from polls or from the work they interleave with
    assert r["work_share"] >= 0.95, r  # the work ran at (at least 95% of) the limit throughout
    assert r["polls"] <= 10, r
    # LOW polls yield to saturating work; the end is noticed once the runner leaves room (or right away).
    assert r["detected"] <= max(DURATION * 1.05, r["worked"] + 10), r


def test_a_fixed_one_second_poll_takes_a_large_share_of_the_limit_from_the_work() -> None:
    # The contrast that makes the test above meaningful: the same runner, next to `while ...: sleep(1)`.
    r = run("fixed-1s", 30.0, work_requests=80)
    assert r["rate_limited"] == 0, r  # the pilot still avoids 429s...
    assert r["work_share"] < 0.90, r  # ...but every poll is a request taken from the work
    assert r["polls"] >= 15, r
