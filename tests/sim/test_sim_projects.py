"""Project-level rate limits and the configurable billing-stop code.

A key of a project with limits (``SimConfig.projects``) is enforced in its organization's buckets and in its
project's, all or nothing; the project's TPM bucket is reported as ``x-ratelimit-*-project-tokens``. Tests run
a real server on the injected fake clock and talk to it with the official SDK; the arithmetic is hand-computed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from ratepilot.clock import FakeClock
from ratepilot.protocol.errors import ErrorClass, LimitKind, classify, rate_limit_error
from ratepilot.sim import ConfigError, FaultConfig, KeySpec, Limits, SimConfig, Simulator
from ratepilot.sim.enforcement import PoolBuckets

from .conftest import user

MODEL = "gpt-4o-mini"
ORG = "org-acme"
KEY_A = "test-key-a"  # in project proj_a
KEY_B = "test-key-b"  # same organization, no project
KEY_C = "test-key-c"  # same organization, a project without limits
KEYS = {KEY_A: KeySpec(ORG, "proj_a"), KEY_B: KeySpec(ORG), KEY_C: KeySpec(ORG, "proj_free")}


def _sim(make_sim: Callable[..., Simulator], **fields: Any) -> Simulator:
    fields.setdefault("keys", KEYS)
    fields.setdefault("settle_actual_tokens", False)  # admission charges only: exact arithmetic
    return make_sim(SimConfig(**fields))


def _chat(client: openai.OpenAI, max_tokens: int = 400, **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user("hello"), max_tokens=max_tokens, **kwargs
    )


def _refused(client: openai.OpenAI, max_tokens: int = 400) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(client, max_tokens)
    return exc.value


def _remaining(headers: Any, family: str) -> int:
    return int(headers[f"x-ratelimit-remaining-{family}"])


def _clock(sim: Simulator) -> FakeClock:
    assert isinstance(sim.clock, FakeClock)
    return sim.clock


def test_the_project_refuses_while_the_organization_has_room(
    make_sim: Callable[..., Simulator], sync_client: Any
) -> None:
    sim = _sim(make_sim, tpm=100_000, projects={"proj_a": Limits(tpm=1_000)})
    client = sync_client(sim, KEY_A)
    first = _chat(client)
    assert first.headers["x-ratelimit-limit-project-tokens"] == "1000"
    assert _remaining(first.headers, "project-tokens") == 600
    assert first.headers["x-ratelimit-reset-project-tokens"] == "24s"  # 400 tokens at 1000 per 60 s
    assert _remaining(first.headers, "tokens") == 99_600
    assert first.headers["openai-project"] == "proj_a"
    assert _remaining(_chat(client).headers, "project-tokens") == 200
    error = _refused(client)
    # 800 of 1000 in use, 400 asked: 200 must drain at 1000 per 60 s = 12 s. The org's buckets had room.
    body = error.response.json()
    assert body == rate_limit_error(MODEL, ORG, LimitKind.TPM, 1_000, 800, 400, 12.0, project="proj_a")
    assert body["error"]["message"].startswith(
        f"Rate limit reached for {MODEL} in project proj_a on tokens per min (TPM): Limit 1000, Used 800, "
        "Requested 400. Please try again in 12s."
    )
    assert error.code == "rate_limit_exceeded" and error.type == "tokens"
    assert classify(429, body).error_class is ErrorClass.RATE_LIMITED
    headers = error.response.headers
    assert headers["retry-after"] == "12"
    # All or nothing: the refusal charged no tokens, in the project or in the organization.
    assert _remaining(headers, "project-tokens") == 200 and _remaining(headers, "tokens") == 99_200
    stats = sim.stats()["rate_limited"]
    assert stats["project"] == 1 and stats["TPM"] == 0 and stats["total"] == 1
    _clock(sim).advance(12.0)
    assert _remaining(_chat(client).headers, "project-tokens") == 0


def test_keys_without_project_limits_are_not_limited_by_projects(
    make_sim: Callable[..., Simulator], sync_client: Any
) -> None:
    sim = _sim(make_sim, tpm=100_000, projects={"proj_a": Limits(tpm=1_000, rpm=1)})
    _chat(sync_client(sim, KEY_A))
    _refused(sync_client(sim, KEY_A))  # proj_a's one request per minute is spent
    for key in (KEY_B, KEY_C):  # no project; a project absent from `projects`
        client = sync_client(sim, key)
        for _ in range(3):  # 1,200 tokens and 3 requests: over proj_a's limits, within the organization's
            raw = _chat(client)
            assert "x-ratelimit-limit-project-tokens" not in raw.headers
    # The organization's buckets are shared by all three keys: 7 requests of 400 tokens admitted.
    assert _remaining(raw.headers, "tokens") == 100_000 - 7 * 400
    assert sim.stats()["rate_limited"]["project"] == 1


def test_a_refusal_by_the_organization_leaves_nothing_charged_in_the_project(
    make_sim: Callable[..., Simulator], sync_client: Any
) -> None:
    sim = _sim(make_sim, tpm=1_000, projects={"proj_a": Limits(tpm=5_000)})
    _chat(sync_client(sim, KEY_B), max_tokens=800)  # another key of the organization takes 800 of its 1000
    client = sync_client(sim, KEY_A)
    error = _refused(client)
    assert f"in organization {ORG} on tokens per min (TPM): Limit 1000, Used 800, Requested 400." in error.message
    assert _remaining(error.response.headers, "project-tokens") == 5_000  # the project was not charged
    stats = sim.stats()["rate_limited"]
    assert stats["TPM"] == 1 and stats["project"] == 0
    _clock(sim).advance(12.0)
    raw = _chat(client)
    assert _remaining(raw.headers, "project-tokens") == 4_600


def test_refused_requests_cost_one_request_in_both_organization_and_project() -> None:
    """Sans-IO: with ``count_refused``, a refusal by either costs one request in the request buckets of both;
    tokens are charged in neither."""

    def used(buckets: PoolBuckets, kind: LimitKind) -> float:
        return buckets.buckets[kind].used(0.0)

    # The project refuses (100 tokens left of 500), the organization would admit (600 left of 1000).
    org, project = PoolBuckets(Limits(rpm=100, tpm=1_000)), PoolBuckets(Limits(rpm=100, tpm=500))
    assert org.admit(1, 400, 0.0, project=project) is None
    refusal = org.admit(1, 400, 0.0, project=project)
    assert refusal is not None and refusal.project and refusal.kind is LimitKind.TPM
    assert (refusal.limit, refusal.used, refusal.requested) == (500, 400, 400)
    assert refusal.wait == pytest.approx(36.0)  # 400 + 400 - 500 = 300 tokens at 500 per 60 s
    assert used(org, LimitKind.RPM) == pytest.approx(2) and used(project, LimitKind.RPM) == pytest.approx(2)
    assert used(org, LimitKind.TPM) == pytest.approx(400) and used(project, LimitKind.TPM) == pytest.approx(400)

    # The organization refuses (100 left of 300), the project would admit.
    org, project = PoolBuckets(Limits(rpm=100, tpm=300)), PoolBuckets(Limits(rpm=100, tpm=5_000))
    assert org.admit(1, 200, 0.0, project=project) is None
    refusal = org.admit(1, 200, 0.0, project=project)
    assert refusal is not None and not refusal.project and refusal.kind is LimitKind.TPM
    assert refusal.wait == pytest.approx(20.0)  # 200 + 200 - 300 = 100 tokens at 300 per 60 s
    assert used(org, LimitKind.RPM) == pytest.approx(2) and used(project, LimitKind.RPM) == pytest.approx(2)
    assert used(org, LimitKind.TPM) == pytest.approx(200) and used(project, LimitKind.TPM) == pytest.approx(200)

    # Refusals free: nothing at all is charged.
    org, project = PoolBuckets(Limits(rpm=100, tpm=1_000)), PoolBuckets(Limits(rpm=100, tpm=100))
    assert org.admit(1, 400, 0.0, project=project, count_refused=False) is not None
    assert used(org, LimitKind.RPM) == 0 and used(project, LimitKind.RPM) == 0 and used(org, LimitKind.TPM) == 0


def test_settling_corrects_the_project_tokens(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = _sim(make_sim, tpm=100_000, projects={"proj_a": Limits(tpm=10_000)}, settle_actual_tokens=True)
    client = sync_client(sim, KEY_A)
    raw = _chat(client, max_tokens=500)
    actual = raw.parse().usage.total_tokens
    assert actual < 500
    # Reserved 500 at admission; settled to the actual usage before the headers were written, in both.
    assert _remaining(raw.headers, "project-tokens") == 10_000 - actual
    assert _remaining(raw.headers, "tokens") == 100_000 - actual


def test_quantized_project_buckets(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    # The project's 6,000 TPM quantized to 1 s: 100 tokens of capacity, while the minute bucket shows room.
    sim = _sim(make_sim, tpm=1_000_000, quantum_s=1.0, projects={"proj_a": Limits(tpm=6_000)})
    client = sync_client(sim, KEY_A)
    _chat(client, max_tokens=60)
    error = _refused(client, max_tokens=60)
    assert "in project proj_a on tokens per min (TPM): Limit 6000, Used 60, Requested 60." in error.message
    assert "Please try again in 200ms." in error.message  # 60 + 60 - 100 = 20 tokens at 100 per second
    assert _remaining(error.response.headers, "project-tokens") == 5_940


def test_project_headers_are_omitted_with_the_others(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = _sim(
        make_sim,
        tpm=100_000,
        projects={"proj_a": Limits(tpm=500)},
        faults=FaultConfig(missing_headers=1.0, headers_on_429_p=0.0),
    )
    client = sync_client(sim, KEY_A)
    assert not any(h.startswith("x-ratelimit-") for h in _chat(client).headers)
    error = _refused(client)
    assert "in project proj_a" in error.message
    assert not any(h.startswith("x-ratelimit-") for h in error.response.headers)


def test_a_project_request_too_large_names_the_project(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = _sim(make_sim, tpm=100_000, projects={"proj_a": Limits(tpm=300)})
    error = _refused(sync_client(sim, KEY_A))
    message = error.response.json()["error"]["message"]
    assert message.startswith(f"Request too large for {MODEL} in project proj_a on tokens per min (TPM): Limit 300")
    assert classify(429, error.response.json()).error_class is ErrorClass.TOO_LARGE
    assert sim.stats()["rate_limited"]["too_large"] == 1


# -- billing codes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["insufficient_quota", "credit_balance_exhausted", "project_spend_limit_exceeded"])
def test_the_quota_error_code(make_sim: Callable[..., Simulator], sync_client: Any, code: str) -> None:
    sim = make_sim(SimConfig(credit_usd=0.0, quota_error_code=code))
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(sync_client(sim))
    assert exc.value.code == code and exc.value.type == "insufficient_quota"
    assert classify(429, exc.value.response.json()).error_class is ErrorClass.QUOTA
    assert sim.stats()["rate_limited"]["insufficient_quota"] == 1


# -- configuration ----------------------------------------------------------------------------------------


def test_toml_projects_and_quota_code(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        """
quota_error_code = "organization_spend_limit_exceeded"

[keys."test-key-a"]
org = "org-acme"
project = "proj_a"

[projects.proj_a]
rpm = 10
tpm = 20000
rpd = 0

[projects."proj b"]
tpd = 5
"""
    )
    config = SimConfig.from_toml(path)
    assert config.quota_error_code == "organization_spend_limit_exceeded"
    assert config.projects == {"proj_a": Limits(rpm=10, tpm=20_000), "proj b": Limits(tpd=5)}
    assert config.keys["test-key-a"] == KeySpec("org-acme", "proj_a")
    assert SimConfig().projects == {} and SimConfig().quota_error_code == "insufficient_quota"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[projects.p]\ntpmm = 5\n", "projects.p: unknown setting"),
        ("[projects.p]\ntpm = -5\n", "projects.p.tpm must be a positive integer"),
        ("[projects.p]\nrpm = 1.5\n", "projects.p.rpm must be a positive integer"),
        ("[projects]\np = 5\n", "projects.p must be a table"),
        ("projects = 5\n", "projects must be a table"),
        ('quota_error_code = "rate_limit_exceeded"\n', "quota_error_code must be one of"),
        ("quota_error_code = 5\n", "quota_error_code has the wrong type"),
    ],
)
def test_toml_bad_values(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        SimConfig.from_toml(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"projects": {"p": Limits(tpm=0)}}, "projects.p.tpm"),
        ({"projects": {"p": Limits(rpm=True)}}, "projects.p.rpm"),
        ({"projects": {"": Limits(tpm=5)}}, "project name"),
        ({"projects": {"p": {"tpm": 5}}}, "projects.p must be a Limits"),
        ({"quota_error_code": "slow_down"}, "quota_error_code"),
    ],
)
def test_bad_values_are_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimConfig(**fields)
