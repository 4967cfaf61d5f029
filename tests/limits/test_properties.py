"""Hypothesis properties of the limiter core (and the Lua copy of it)."""

from __future__ import annotations

import math
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits_helpers import REDIS_URL, require_redis

from ratepilot.clock import FakeClock
from ratepilot.limits import core
from ratepilot.limits.core import DimObservation, Observation, Refusal, Reserved, ReserveParams, ScopeState
from ratepilot.limits.learning import interpret
from ratepilot.limits.stores.redis import RedisStore
from ratepilot.limits.types import DIM_INDEX, N_DIMS, Cost
from ratepilot.protocol.headers import DimensionState, RateLimitHeaders

RPM, TPM, RPD, TPD = (DIM_INDEX[n] for n in ("rpm", "tpm", "rpd", "tpd"))
W = 60.0
PARAMS = ReserveParams()


def learned_state(rpm: float, tpm: float, now: float) -> ScopeState:
    s = ScopeState()
    s.lim[RPM], s.lim[TPM] = rpm, tpm
    s.srv[RPM], s.srv[TPM] = rpm, tpm  # as reported by the server
    s.tat[RPM] = s.tat[TPM] = now
    return s


class ReferenceServer:
    """An independent leaky bucket (a level that drains at limit/window) — what the server enforces."""

    def __init__(self, limits: dict[int, float]) -> None:
        self.limits = limits
        self.level = dict.fromkeys(limits, 0.0)
        self.t = 0.0

    def at(self, t: float) -> None:
        for d, lim in self.limits.items():
            self.level[d] = max(0.0, self.level[d] - (t - self.t) * lim / W)
        self.t = t

    def room(self, costs: tuple[float, ...]) -> float:
        """Smallest slack over the dimensions (negative: the server would refuse)."""
        return min(lim - self.level[d] - costs[d] for d, lim in self.limits.items())

    def charge(self, costs: tuple[float, ...]) -> None:
        for d in self.limits:
            self.level[d] = max(0.0, self.level[d] + costs[d])


ops = st.lists(
    st.tuples(
        st.floats(0, 20, allow_nan=False),  # time step
        st.sampled_from(["reserve", "reserve", "reserve", "settle", "cancel"]),
        st.integers(0, 400),  # reserved tokens
        st.integers(0, 800),  # actual tokens
        st.integers(0, 1000),  # which outstanding grant
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rpm=st.integers(1, 30), tpm=st.integers(400, 5_000), script=ops)
def test_admitted_cost_never_exceeds_the_limit_and_settle_cancel_never_leak(
    rpm: int, tpm: int, script: list[tuple[float, str, int, int, int]]
) -> None:
    """Every admission fits in an independent server-side bucket (never over the limit in any window), and
    whenever the server would have room the limiter admits too: settle/cancel neither create nor leak."""
    now = 0.0
    state = learned_state(rpm, tpm, now)
    server = ReferenceServer({RPM: rpm, TPM: tpm})
    outstanding: list[tuple[Reserved, Cost]] = []
    for dt, op, tokens, actual, pick in script:
        now += dt
        server.at(now)
        if op == "reserve":
            cost = Cost(1, tokens)
            costs = cost.per_dimension()
            slack = server.room(costs)
            decision = core.reserve(state, costs, now, PARAMS)
            if isinstance(decision, Reserved):
                assert slack >= -1e-6, "admitted what the server would refuse"
                server.charge(costs)
                outstanding.append((decision, cost))
            else:
                assert slack <= 1e-6, f"refused although the server had {slack} to spare (leaked capacity)"
                assert decision.seconds > 0
        elif outstanding:
            grant, cost = outstanding.pop(pick % len(outstanding))
            if op == "settle":
                deltas = tuple(float(actual - cost.tokens) if d in (TPM, TPD) else 0.0 for d in range(N_DIMS))
            else:
                deltas = tuple(-c for c in cost.per_dimension())
            core.adjust(state, deltas, grant.charged, -1.0, 0.0, now)
            server.charge(deltas)
    for grant, cost in outstanding:  # cancelling the rest leaves exactly what the server has: nothing leaked
        refund = tuple(-c for c in cost.per_dimension())
        core.adjust(state, refund, grant.charged, -1.0, 0.0, now)
        server.charge(refund)
    view = core.view(state, now)
    assert view["rpm"].remaining == pytest.approx(max(0.0, rpm - server.level[RPM]), abs=1e-6)
    assert view["tpm"].remaining == pytest.approx(max(0.0, tpm - server.level[TPM]), abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 50),
    arrivals=st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.integers(1, 5)), max_size=120),
)
def test_no_window_ever_holds_more_than_the_bucket_allows(limit: int, arrivals: list[tuple[float, int]]) -> None:
    """For admitted (t_i, c_i): any window [t_i, t_j] holds at most limit + (t_j - t_i) x limit / 60."""
    state = learned_state(limit, 1e12, 0.0)
    now, admitted = 0.0, []
    for dt, cost in arrivals:
        now += dt
        if cost <= limit and isinstance(core.reserve(state, (cost, 0, 0, 0, 0), now, PARAMS), Reserved):
            admitted.append((now, cost))
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            assert total <= limit + (admitted[j][0] - admitted[i][0]) * limit / W + 1e-6


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 10_000_000),
    used_fraction=st.floats(0, 1),
    tokens_limit=st.integers(100, 10_000_000),
    tokens_used_fraction=st.floats(0, 1),
    age=st.floats(0, 5),
    margin=st.sampled_from([0.0, 0.1]),
    daily=st.booleans(),
)
def test_learning_converges_after_one_response(
    limit: int,
    used_fraction: float,
    tokens_limit: int,
    tokens_used_fraction: float,
    age: float,
    margin: float,
    daily: bool,
) -> None:
    window = 86_400.0 if daily else 60.0
    # The observed request itself used at least 1 unit; a daily bucket is recognisable once reset >= 50 ms.
    used = max(1, round(limit * used_fraction))
    if daily:
        used = max(used, math.ceil(0.05 * limit / window))
        if used > limit:
            return
    t_used = max(1, round(tokens_limit * tokens_used_fraction))
    hdrs = RateLimitHeaders(
        requests=DimensionState(limit, limit - used, used * window / limit),
        tokens=DimensionState(tokens_limit, tokens_limit - t_used, t_used * 60 / tokens_limit),
    )
    state, now = ScopeState(), 1_000.0
    probe = core.reserve(state, Cost(1, 1).per_dimension(), now - age, PARAMS)
    assert isinstance(probe, Reserved) and probe.probe
    obs = interpret(hdrs, grant=None, ceiling=(0.0,) * N_DIMS, safety_margin=margin, answered=True, start_burst=60.0)
    core.observe(state, obs, now)
    view = core.view(state, now)
    req = view["rpd" if daily else "rpm"]
    eff = limit * (1 - margin)
    assert req.limit == pytest.approx(eff) and req.server_limit == limit and req.window == window
    expected = max(0.0, eff - used)  # no refill credited for the response's age (the safe reading)
    assert req.remaining == pytest.approx(expected, rel=1e-9, abs=1e-6)
    tok = view["tpm"]
    assert tok.limit == pytest.approx(tokens_limit * (1 - margin))
    t_eff = tokens_limit * (1 - margin)
    t_expected = max(0.0, t_eff - t_used)
    assert tok.remaining == pytest.approx(t_expected, rel=1e-9, abs=1e-6)
    # And it admits right away exactly what is left, no more: one more request waits.
    if req.remaining >= 1 and tok.remaining >= 1:
        assert isinstance(core.reserve(state, Cost(1, 1).per_dimension(), now, PARAMS), Reserved)
    big = Cost(1, int(tok.remaining) + 2)
    assert not isinstance(core.reserve(state, big.per_dimension(), now, PARAMS), Reserved) or big.tokens > t_eff


# ------------------------------------------------------------------ the Lua scripts match the Python core
lua_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, 30, allow_nan=False)),
        st.tuples(
            st.just("reserve"),
            st.integers(0, 3),
            st.integers(0, 3_000),
            st.sampled_from([0.0, 0.1]),
            st.sampled_from([(0.0,) * N_DIMS, (20.0, 0.0, 0.0, 0.0, 0.0)]),
        ),
        st.tuples(st.just("adjust"), st.integers(-2_000, 2_000), st.booleans(), st.booleans()),
        st.tuples(
            st.just("observe"),
            st.integers(1, 200),
            st.integers(0, 200),
            st.integers(100, 20_000),
            st.integers(0, 20_000),
        ),
        st.tuples(st.just("observe_empty")),
        st.tuples(st.just("penalize"), st.floats(0, 30, allow_nan=False)),
        # The learned burst: refusals (with or without evidence, slow_down) and answered observations.
        st.tuples(st.just("refuse"), st.floats(0, 5, allow_nan=False), st.booleans(), st.booleans()),
        st.tuples(
            st.just("answered"),
            st.integers(1, 200),
            st.integers(0, 200),
            st.sampled_from([0.5, 1.0, 60.0, 90.0]),
        ),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=lua_ops)
def test_lua_scripts_match_the_python_core(script: list[tuple[object, ...]]) -> None:
    require_redis()
    clock = FakeClock()
    prefix = f"rptest:{uuid.uuid4().hex}:"
    store = RedisStore(REDIS_URL, clock, prefix=prefix)
    py = ScopeState()
    last: Reserved | None = None
    try:
        for op in script:
            now = clock.now()
            kind = op[0]
            if kind == "advance":
                clock.advance(float(op[1]))  # type: ignore[arg-type]
                continue
            if kind == "reserve":
                _, reqs, toks, headroom, ceiling = op
                params = ReserveParams(ceiling=ceiling, headroom=headroom)  # type: ignore[arg-type]
                costs = Cost(reqs, toks).per_dimension()  # type: ignore[arg-type]
                a, b = core.reserve(py, costs, now, params), store.reserve("s", costs, params)
                assert type(a) is type(b)
                if isinstance(a, Reserved) and isinstance(b, Reserved):
                    assert (a.seq, a.charged, a.probe, a.lease) == (b.seq, b.charged, b.probe, b.lease)
                    assert a.used == pytest.approx(b.used)
                    last = a
                else:
                    assert a.seconds == pytest.approx(b.seconds)  # type: ignore[union-attr]
            elif kind == "adjust":
                _, delta, all_dims, release = op
                charged = last.charged if last else (True,) * N_DIMS
                deltas = tuple(float(delta) if all_dims or i % 2 else 0.0 for i in range(N_DIMS))  # type: ignore[arg-type]
                hold, lease = (1.0 if release else -1.0), (last.lease if last else 0.0)
                core.adjust(py, deltas, charged, hold, lease, now)
                store.adjust("s", deltas, charged, hold, lease)
            elif kind in ("observe", "observe_empty"):
                dims = ()
                if kind == "observe":
                    _, rl, ru, tl, tu = op
                    dims = (
                        DimObservation(RPM, float(rl), float(rl), float(min(ru, rl))),  # type: ignore[arg-type]
                        DimObservation(TPM, float(tl), float(tl), float(min(tu, tl))),  # type: ignore[arg-type]
                    )
                obs = Observation(dims)
                core.observe(py, obs, now)
                store.observe("s", obs)
            elif kind == "penalize":
                core.penalize(py, float(op[1]), now)  # type: ignore[arg-type]
                store.penalize("s", float(op[1]))  # type: ignore[arg-type]
            elif kind == "refuse":
                _, wait, evidence, slow = op
                if last is None:
                    continue
                used = last.used if evidence else tuple(-1.0 for _ in last.used)
                refusal = Refusal(float(wait), last.seq, used, (1.0, 20.0, 1.0, 20.0, 20.0), bool(slow))  # type: ignore[arg-type]
                core.refuse(py, refusal, now)
                store.refuse("s", refusal)
            elif kind == "answered":
                _, rl, ru, start = op
                dims = (DimObservation(RPM, float(rl), float(rl), float(min(ru, rl))),)  # type: ignore[arg-type]
                used = last.used if last is not None else (0.0,) * N_DIMS
                obs = Observation(dims, used, (1.0, 20.0, 1.0, 20.0, 20.0), start)  # type: ignore[arg-type]
                core.observe(py, obs, now)
                store.observe("s", obs)
            got, _ = store.load("s")
            if got is None:
                continue
            assert (got.seq, got.nohdr) == (py.seq, py.nohdr)
            for name in ("lim", "srv", "tat", "frate", "ft", "tol", "tseq"):
                assert getattr(got, name) == pytest.approx(getattr(py, name), abs=1e-6), name
            assert (got.pace, got.pt, got.pseq) == pytest.approx((py.pace, py.pt, py.pseq), abs=1e-9)
            assert got.probe_until == pytest.approx(py.probe_until)
            assert got.blocked_until == pytest.approx(py.blocked_until)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(prefix + "s")
        client.close()
        store.close()
