"""Realistic enforcement on the wire: quantized limits, charged refusals, unreliable headers, the ramp limit.

Every test runs a real server on the injected fake clock (time moves only when a test advances it) and talks
to it through the official SDK, so the behaviour is checked on the wire; the arithmetic is hand-computed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import openai
import pytest

from ratepilot.clock import FakeClock
from ratepilot.protocol.errors import ErrorClass, LimitKind, classify, rate_limit_error, slow_down_error
from ratepilot.sim import FaultConfig, SimConfig, Simulator
from ratepilot.sim.config import REALISTIC
from ratepilot.sim.enforcement import ideal_admissions

from .conftest import user

MODEL = "gpt-4o-mini"


def _chat(client: openai.OpenAI, text: str = "hello", **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=MODEL, messages=user(text), **kwargs)


def _refused(client: openai.OpenAI, text: str = "hello", **kwargs: Any) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client, text, **kwargs)
    return exc.value


def _clock(sim: Simulator) -> FakeClock:
    assert isinstance(sim.clock, FakeClock)
    return sim.clock


# -- quantized limits -------------------------------------------------------------------------------------


def test_quantized_burst_is_refused_while_headers_show_the_minute_room(
    make_sim: Callable[..., Simulator], sync_client: Any
) -> None:
    # 600 RPM quantized to 1 s: capacity 600 × 1 / 60 = 10 requests, refilled at one per 0.1 s.
    sim = make_sim(rpm=600, tpm=None, quantum_s=1.0)
    client = sync_client(sim)
    for i in range(10):
        raw = _chat(client)
        assert raw.headers["x-ratelimit-remaining-requests"] == str(599 - i)  # the minute bucket, not the quantum
    error = _refused(client)
    headers = error.response.headers
    # The minute bucket still shows almost the whole minute (600 - 10 admitted - 1 refused and charged)...
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert headers["x-ratelimit-remaining-requests"] == "589"
    # ...and the body is the ordinary RPM one, "Used" from the minute bucket, the wait from the quantum:
    # charged, the quantum bucket holds 11 requests (1.1 s) and needs 1.2 - 1.0 = 0.2 s for this one.
    org = headers["openai-organization"]
    assert error.response.json() == rate_limit_error(MODEL, org, LimitKind.RPM, 600, 11, 1, 0.2)
    assert "Limit 600, Used 11, Requested 1. Please try again in 200ms." in error.message
    assert headers["retry-after"] == "1"
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert classify(429, error.response.json()).error_class is ErrorClass.RATE_LIMITED
    _clock(sim).advance(0.2)
    assert _chat(client).status_code == 200
    assert sim.stats()["rate_limited"]["RPM"] == 1


def test_quantized_tokens(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    # 60,000 TPM quantized to 1 s: 1,000 tokens of capacity, refilled at 1,000 per second.
    sim = make_sim(rpm=None, tpm=60_000, quantum_s=1.0, settle_actual_tokens=False)
    client = sync_client(sim)
    _chat(client, max_tokens=400)
    raw = _chat(client, max_tokens=400)
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(60_000 - 800)
    error = _refused(client, max_tokens=400)
    org = error.response.headers["openai-organization"]
    # 200 tokens short of the quantum at 1,000 tokens/s; no request bucket, so nothing else is charged.
    assert error.response.json() == rate_limit_error(MODEL, org, LimitKind.TPM, 60_000, 800, 400, 0.2)
    assert error.response.headers["x-ratelimit-remaining-tokens"] == "59200"
    _clock(sim).advance(0.2)
    assert _chat(client, max_tokens=400).status_code == 200


def test_a_request_larger_than_the_quantum_is_admitted_into_an_empty_quantum(
    make_sim: Callable[..., Simulator], sync_client: Any
) -> None:
    sim = make_sim(rpm=None, tpm=60_000, quantum_s=1.0, settle_actual_tokens=False)  # quantum: 1,000 tokens
    client = sync_client(sim)
    clock = _clock(sim)
    # Empty quantum: a 5,000-token request goes straight through (the real API serves it)...
    assert _chat(client, max_tokens=5_000).status_code == 200
    # ...and overfills the quantum bucket (5 s of refill): a small request now waits 5.1 - 1 = 4.1 s.
    error = _refused(client, max_tokens=100)
    assert "Used 5000, Requested 100. Please try again in 4.1s." in error.message
    clock.advance(4.1)
    assert _chat(client, max_tokens=100).status_code == 200
    # A large request waits for the quantum bucket to be empty, not for room it can never have: the bucket
    # still holds 900 tokens of the first large request plus these 100, 1 s of refill.
    error = _refused(client, max_tokens=5_000)
    assert "Used 1000, Requested 5000. Please try again in 1s." in error.message
    clock.advance(0.999)
    assert "Please try again in 1ms." in _refused(client, max_tokens=5_000).message
    clock.advance(0.001)
    assert _chat(client, max_tokens=5_000).status_code == 200
    # Beyond the minute limit itself it is still "Request too large".
    with pytest.raises(openai.RateLimitError) as too_large:
        _chat(client, max_tokens=70_000)
    assert too_large.value.response.json()["error"]["message"].startswith("Request too large")


def test_charged_refusals_lengthen_the_wait(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    def waits(charge: bool) -> list[str]:
        sim = make_sim(rpm=600, tpm=None, quantum_s=1.0, count_refused_requests=charge, retry_after="exact")
        client = sync_client(sim)
        for _ in range(10):
            _chat(client)
        return [_refused(client).response.headers["retry-after"] for _ in range(3)]

    # Each early retry costs one request in the quantum bucket too: 0.1 s more each time.
    assert waits(True) == ["0.2", "0.3", "0.4"]
    assert waits(False) == ["0.1", "0.1", "0.1"]


# -- unreliable headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_headers_on_429_probability(make_sim: Callable[..., Simulator], sync_client: Any, p: float) -> None:
    sim = make_sim(rpm=1, tpm=None, faults=FaultConfig(headers_on_429_p=p))
    client = sync_client(sim)
    assert "x-ratelimit-limit-requests" in _chat(client).headers  # successes are not affected
    headers = _refused(client).response.headers
    assert ("x-ratelimit-remaining-requests" in headers) is (p == 1.0)
    assert "retry-after" in headers and headers["x-request-id"]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_retry_after_probability(make_sim: Callable[..., Simulator], sync_client: Any, p: float) -> None:
    sim = make_sim(rpm=1, tpm=None, retry_after_ms=True, faults=FaultConfig(retry_after_p=p))
    client = sync_client(sim)
    _chat(client)
    error = _refused(client)
    assert ("retry-after" in error.response.headers) is (p == 1.0)
    assert ("retry-after-ms" in error.response.headers) is (p == 1.0)
    assert "Please try again in 2m0s." in error.message  # the body always says it (2 requests at 1 RPM)
    assert "x-ratelimit-limit-requests" in error.response.headers


def test_header_draws_are_seeded(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    def pattern(seed: int) -> list[tuple[bool, bool]]:
        faults = FaultConfig(headers_on_429_p=0.5, retry_after_p=0.5)
        sim = make_sim(rpm=1, tpm=None, faults=faults, seed=seed, count_refused_requests=False)
        client = sync_client(sim)
        _chat(client)
        out = []
        for _ in range(24):
            headers = _refused(client).response.headers
            out.append(("x-ratelimit-limit-requests" in headers, "retry-after" in headers))
        return out

    first = pattern(3)
    assert first == pattern(3)  # reproducible with the same seed
    assert {h for h, _ in first} == {True, False} and {r for _, r in first} == {True, False}


def test_token_headers_that_read_minus_one(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    """``faults.unknown_token_headers``: a success's token headers read -1 (Azure's Responses API has sent that);
    the request headers are kept, and the client reads the token family as absent."""
    from ratepilot.protocol.headers import RateLimitHeaders

    sim = make_sim(rpm=100, tpm=10_000, faults=FaultConfig(unknown_token_headers=1.0))
    headers = _chat(sync_client(sim)).headers
    assert [headers[f"x-ratelimit-{n}-tokens"] for n in ("limit", "remaining", "reset")] == ["-1", "-1", "-1"]
    assert headers["x-ratelimit-limit-requests"] == "100"
    parsed = RateLimitHeaders.parse(headers)
    assert parsed.tokens is None and parsed.requests is not None and parsed.requests.remaining == 99
    assert sim.stats()["faults"]["unknown_token_headers"] == 1


def test_missing_headers_on_429_bool_still_means_never(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    faults = FaultConfig(missing_headers_on_429=True)
    assert faults.ratelimit_headers_on_429 == 0.0 and FaultConfig().ratelimit_headers_on_429 == 1.0
    sim = make_sim(rpm=1, tpm=None, faults=faults)
    client = sync_client(sim)
    _chat(client)
    assert "x-ratelimit-limit-requests" not in _refused(client).response.headers


# -- the ramp limit ---------------------------------------------------------------------------------------


def _ramp_sim(make_sim: Callable[..., Simulator], **fields: Any) -> Simulator:
    # 120 RPM, 15 s windows, floor 0.5: a window may always admit 0.5 × 120 × 15 / 60 = 15 requests.
    # The clock starts on a window boundary (1,500 = 100 × 15) so the windows are easy to follow.
    config: dict[str, Any] = {"rpm": 120, "tpm": None, "ramp_factor": 2.0, "ramp_window_s": 15.0}
    config.update(fields)
    return make_sim(clock=FakeClock(start=1_500.0), **config)


def test_ramp_slow_down_body(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = _ramp_sim(make_sim)
    client = sync_client(sim)
    _clock(sim).advance(10.8)  # 4.2 s before the next window
    for _ in range(15):
        _chat(client)
    error = _refused(client)
    body = error.response.json()
    assert body == slow_down_error(4.2)
    assert body == {
        "error": {
            "message": "Your request rate increased too quickly. Please slow down: reduce your request rate and "
            "ramp up gradually. Please try again in 4.2s.",
            "type": "rate_limit_error",
            "param": None,
            "code": "slow_down",
        }
    }
    assert error.code == "slow_down" and error.type == "rate_limit_error"
    assert error.response.headers["retry-after"] == "5"
    # Charged like any refusal: 120 - 15 admitted - 1 refused.
    assert error.response.headers["x-ratelimit-remaining-requests"] == "104"
    assert classify(429, body).error_class is ErrorClass.RATE_LIMITED
    stats = sim.stats()["rate_limited"]
    assert stats["slow_down"] == 1 and stats["RPM"] == 0 and stats["total"] == 1
    _clock(sim).advance(4.2)
    assert _chat(client).status_code == 200


def test_ramp_slow_down_as_older_servers_sent_it(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    """``slow_down_status=503``: the same slow_down body on a 503, which the client still reads as a rate limit."""
    sim = _ramp_sim(make_sim, slow_down_status=503)
    client = sync_client(sim)
    _clock(sim).advance(10.8)
    for _ in range(15):
        _chat(client)
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client)
    assert exc.value.status_code == 503 and exc.value.response.json() == slow_down_error(4.2)
    assert classify(503, exc.value.response.json()).error_class is ErrorClass.RATE_LIMITED
    assert sim.stats()["rate_limited"]["slow_down"] == 1


def test_ramp_floor_and_factor(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = _ramp_sim(make_sim, count_refused_requests=False, rpm=1_000)
    client = sync_client(sim)
    clock = _clock(sim)

    def admitted_in_window() -> int:
        """Send until the first slow_down; how many were admitted."""
        n = 0
        while True:
            try:
                _chat(client)
            except openai.RateLimitError as exc:
                assert exc.code == "slow_down"
                return n
            n += 1

    # 1,000 RPM: floor 0.5 × 1000 × 15 / 60 = 125; then at most twice the window before.
    assert admitted_in_window() == 125
    clock.advance(15)
    assert admitted_in_window() == 250
    clock.advance(15)
    for _ in range(100):  # a quieter window...
        _chat(client)
    clock.advance(15)
    assert admitted_in_window() == 200  # ...lets the next one grow only to twice that
    clock.advance(15)
    for _ in range(10):
        _chat(client)
    clock.advance(15)
    assert admitted_in_window() == 125  # the floor, when twice the previous window is less
    clock.advance(30)  # a whole window without traffic: back to the floor
    assert admitted_in_window() == 125


def test_ramp_on_tokens_and_the_first_request_of_a_window(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    # 60,000 TPM: floor 0.5 × 60,000 × 15 / 60 = 7,500 admitted tokens per window at first.
    sim = _ramp_sim(make_sim, rpm=None, tpm=60_000, settle_actual_tokens=False)
    client = sync_client(sim)
    for _ in range(7):
        _chat(client, max_tokens=1_000)
    error = _refused(client, max_tokens=1_000)
    assert error.code == "slow_down" and "Please try again in 15s." in error.message
    _clock(sim).advance(15)
    for _ in range(14):  # twice the 7,000 tokens the previous window admitted
        _chat(client, max_tokens=1_000)
    assert _refused(client, max_tokens=1_000).code == "slow_down"
    # The first request of a window always passes, even one larger than the window's allowance.
    sim2 = _ramp_sim(make_sim, rpm=None, tpm=60_000, ramp_floor=0.1, settle_actual_tokens=False)  # 1,500
    other = sync_client(sim2)
    assert _chat(other, max_tokens=5_000).status_code == 200
    assert _refused(other, max_tokens=1).code == "slow_down"


def test_ramp_is_checked_after_the_buckets(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    # 1 RPM: the ramp (floor 0.25 request) would refuse the second request too, but the bucket speaks first.
    sim = _ramp_sim(make_sim, rpm=1)
    client = sync_client(sim)
    _chat(client)
    error = _refused(client)
    assert error.code == "rate_limit_exceeded"
    assert sim.stats()["rate_limited"]["slow_down"] == 0


def test_ramp_leaves_gets_alone(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = _ramp_sim(make_sim)
    client = sync_client(sim)
    for _ in range(40):  # beyond the 15 a model pool's first window allows
        client.models.list()
    assert sim.stats()["rate_limited"]["total"] == 0


# -- the preset -------------------------------------------------------------------------------------------


def test_realistic_preset_values() -> None:
    config = SimConfig.realistic()
    assert config.quantum_s == 1.0
    assert config.count_refused_requests is True
    assert config.faults.missing_headers == 0.02
    assert config.faults.headers_on_429_p == 0.5
    assert config.faults.retry_after_p == 0.5
    assert (config.ramp_factor, config.ramp_window_s, config.ramp_floor) == (2.0, 15.0, 0.5)
    assert config.rpm == SimConfig().rpm  # limits are not part of the preset
    tuned = SimConfig.realistic(rpm=300, quantum_s=None)
    assert tuned.rpm == 300 and tuned.quantum_s is None and tuned.ramp_factor == 2.0
    assert set(REALISTIC) <= {f.name for f in dataclasses.fields(SimConfig)}


def test_defaults_keep_the_friendly_world() -> None:
    config = SimConfig()
    assert config.quantum_s is None and config.ramp_factor is None
    assert config.faults == FaultConfig()
    assert config.faults.headers_on_429_p == 1.0 and config.faults.retry_after_p == 1.0
    assert config.count_refused_requests is True  # the one default that changed: refusals count


def test_realistic_preset_on_the_wire(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(SimConfig.realistic(rpm=600, tpm=None, seed=1))
    client = sync_client(sim)
    for _ in range(10):
        _chat(client)
    error = _refused(client)  # quantized: the 11th request in the same second
    assert error.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"quantum_s": 0}, "quantum_s"),
        ({"quantum_s": 61}, "quantum_s"),
        ({"ramp_factor": 0.5}, "ramp_factor"),
        ({"ramp_window_s": 0}, "ramp_window_s"),
        ({"ramp_floor": -1}, "ramp_floor"),
        ({"faults": FaultConfig(headers_on_429_p=1.5)}, "faults.headers_on_429_p"),
        ({"faults": FaultConfig(retry_after_p=-0.1)}, "faults.retry_after_p"),
        ({"faults": FaultConfig(unknown_token_headers=2)}, "faults.unknown_token_headers"),
        ({"slow_down_status": 500}, "slow_down_status"),
    ],
)
def test_bad_values_are_config_errors(fields: dict[str, Any], message: str) -> None:
    from ratepilot.sim import ConfigError

    with pytest.raises(ConfigError, match=message):
        SimConfig(**fields)


# -- TOML -------------------------------------------------------------------------------------------------


def test_toml_keys(tmp_path: Any) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        """
quantum_s = 2
count_refused_requests = false
ramp_factor = 1.5
ramp_window_s = 30
ramp_floor = 0.25
slow_down_status = 503

[faults]
missing_headers = 0.1
unknown_token_headers = 0.2
headers_on_429_p = 0.3
retry_after_p = 0.4
"""
    )
    config = SimConfig.from_toml(path)
    assert config.quantum_s == 2.0 and config.count_refused_requests is False
    assert (config.ramp_factor, config.ramp_window_s, config.ramp_floor) == (1.5, 30.0, 0.25)
    assert config.slow_down_status == 503
    assert config.faults == FaultConfig(
        missing_headers=0.1, unknown_token_headers=0.2, headers_on_429_p=0.3, retry_after_p=0.4
    )


def test_toml_preset(tmp_path: Any) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('preset = "realistic"\n')
    assert SimConfig.from_toml(path) == SimConfig.realistic()
    # The file refines the preset: 0 turns a switch off, a partial [faults] keeps the preset's other faults.
    path.write_text('preset = "realistic"\nquantum_s = 0\nramp_factor = false\n[faults]\nretry_after_p = 1.0\n')
    config = SimConfig.from_toml(path)
    assert config.quantum_s is None and config.ramp_factor is None
    assert config.faults == FaultConfig(missing_headers=0.02, headers_on_429_p=0.5, retry_after_p=1.0)
    # The keyword preset (the CLI's --realistic) works without the key; overrides win over everything.
    path.write_text("ramp_floor = 0.1\n")
    config = SimConfig.from_toml(path, preset="realistic", ramp_window_s=60.0)
    assert (config.quantum_s, config.ramp_floor, config.ramp_window_s) == (1.0, 0.1, 60.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('preset = "wild"', "preset must be one of"),
        ("preset = 3", "preset must be one of"),
        ("quantum_s = 90", "quantum_s must be"),
        ("quantum_s = 'fast'", "quantum_s must be a non-negative number"),
        ("ramp_factor = 0.5", "ramp_factor must be"),
        ("ramp_floor = true", "ramp_floor has the wrong type"),
        ("ramp_window = 15", "unknown setting 'ramp_window'"),
        ("[faults]\nheaders_on_429_p = 1.5", "faults.headers_on_429_p"),
        ("[faults]\nretry_after = 0.5", "faults: unknown setting(s) retry_after"),
    ],
)
def test_toml_bad_values(tmp_path: Any, text: str, message: str) -> None:
    from ratepilot.sim import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        SimConfig.from_toml(path)


# -- the ideal schedule -----------------------------------------------------------------------------------


def test_ideal_minute_only() -> None:
    # 3 RPM: three at once, then one per 20 s.
    assert ideal_admissions(SimConfig(rpm=3, tpm=None), MODEL, [(10, 10)] * 5) == [0.0, 0.0, 0.0, 20.0, 40.0]
    # 100 TPM, 40 tokens each, no settling: 80 at once; 20 tokens short (12 s); then 40 short (24 s more).
    unsettled = SimConfig(rpm=None, tpm=100, settle_actual_tokens=False)
    assert ideal_admissions(unsettled, MODEL, [(40, 40)] * 4) == pytest.approx([0.0, 0.0, 12.0, 36.0])
    # Settled to 30 actual tokens each: 0 + 40, 30 + 40, 60 + 40 fit; 90 + 40 is 30 over: 18 s.
    settled = SimConfig(rpm=None, tpm=100)
    assert ideal_admissions(settled, MODEL, [(40, 30)] * 4) == pytest.approx([0.0, 0.0, 0.0, 18.0])


def test_ideal_quantized() -> None:
    # 120 RPM over 1 s: capacity 2, one more every 0.5 s (the minute bucket never binds then).
    config = SimConfig(rpm=120, tpm=None, quantum_s=1.0)
    assert ideal_admissions(config, MODEL, [(1, 1)] * 5) == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5])
    # 60,000 TPM over 1 s: 1,000 tokens, 1,000/s. A 3,000-token request waits for the empty quantum (t = 1),
    # overfills it to t = 4; the next 200 tokens fit once it is back to 800 (t = 3.2).
    tokens = SimConfig(rpm=None, tpm=60_000, quantum_s=1.0)
    costs = [(500, 500), (500, 500), (3_000, 3_000), (200, 200)]
    assert ideal_admissions(tokens, MODEL, costs) == pytest.approx([0.0, 0.0, 1.0, 3.2])
    # Settling applies to the quantum bucket too: 1,000 reserved, 200 used, so the second waits 0.2 s.
    assert ideal_admissions(tokens, MODEL, [(1_000, 200)] * 2) == pytest.approx([0.0, 0.2])


def test_ideal_ramp() -> None:
    # 120 RPM, windows of 15 s from 0, floor 15 per window, factor 2.
    config = SimConfig(rpm=120, tpm=None, ramp_factor=2.0, ramp_window_s=15.0, ramp_floor=0.5)
    expected = [0.0] * 15 + [15.0] * 30 + [30.0] * 5
    assert ideal_admissions(config, MODEL, [(1, 1)] * 50) == pytest.approx(expected)
    # With quantization (2 per 0.5 s after a burst of 2): the first window's 15 by t = 6.5, the next at 15.
    quantized = dataclasses.replace(config, quantum_s=1.0)
    expected = [0.0, 0.0] + [0.5 * k for k in range(1, 14)] + [15.0, 15.0, 15.5]
    assert ideal_admissions(quantized, MODEL, [(1, 1)] * 18) == pytest.approx(expected)


def test_ideal_errors() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        ideal_admissions(SimConfig(), "no-such-model", [(1, 1)])
    with pytest.raises(ValueError, match="can never be admitted"):
        ideal_admissions(SimConfig(tpm=100), MODEL, [(101, 101)])


def test_ideal_schedule_is_what_the_server_admits(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    """Sent at the ideal times, every request is admitted; a little earlier, it is refused."""
    from ratepilot.protocol.tokens import admission_cost, estimate_prompt_tokens

    config = SimConfig(
        rpm=240,
        tpm=6_000,
        quantum_s=1.0,
        ramp_factor=2.0,
        ramp_window_s=5.0,
        ramp_floor=0.5,
        responder="fixed",
        fixed_text="ok",
        count_refused_requests=False,  # the early probes must not change the schedule
    )
    bodies = [
        {"model": MODEL, "messages": user(f"request {i}: " + "words " * (i % 7 * 30)), "max_tokens": 5}
        for i in range(40)
    ]
    endpoint = "/v1/chat/completions"
    costs = [(admission_cost(endpoint, b), estimate_prompt_tokens(endpoint, b, MODEL) + 1) for b in bodies]
    times = ideal_admissions(config, MODEL, costs)
    assert times[-1] > 10  # the rules bind: this is not one burst
    clock = FakeClock(start=0.0)  # the ideal's time 0 is the server's, so the ramp windows line up
    sim = make_sim(config, clock=clock)
    client = sync_client(sim)
    probed = 0
    for body, (_, actual), t in zip(bodies, costs, times, strict=True):
        if t - clock.now() > 0.01:
            clock.advance(t - clock.now() - 0.005)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(**body)
            probed += 1
        clock.advance(max(0.0, t - clock.now()))
        raw = client.chat.completions.with_raw_response.create(**body)
        assert raw.parse().usage.total_tokens == actual  # the costs the ideal was computed with
    assert probed > 10
    stats = sim.stats()["rate_limited"]
    assert stats["slow_down"] > 0 and stats["RPM"] + stats["TPM"] > 0  # both kinds of rule were met
