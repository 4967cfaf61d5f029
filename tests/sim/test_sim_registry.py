"""The endpoint registry: every part of the simulator knows every registered endpoint, and nothing else.

Each entry's ``example`` body goes through every part (validation, the token rule shared with the client,
the generator, the online route or its absence, ``state.execute``), so an endpoint cannot be half-added.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.protocol.tokens import request_texts
from ratepilot.sim import SimConfig, SimState, Simulator, create_app
from ratepilot.sim.endpoints import BATCH_ENDPOINTS, ENDPOINTS, ONLINE_ENDPOINTS, Endpoint
from ratepilot.sim.longrun.http_batches import BATCH_ENDPOINTS as LONGRUN_BATCH_ENDPOINTS

_keys = itertools.count(1)
EVERY = sorted(ENDPOINTS.values(), key=lambda e: e.path)


def key() -> str:
    return f"test-registry-{next(_keys):06d}"  # not sk-: test keys must never look like real ones


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(), clock=FakeClock()) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[OpenAI]:
    with OpenAI(base_url=sim.base_url, api_key=key(), max_retries=0) as c:
        yield c


def post(client: OpenAI, path: str, body: Any) -> httpx.Response:
    """A raw POST through the SDK (the registry's paths include ones the SDK has no typed method for)."""
    return client.post(path.removeprefix("/v1"), cast_to=httpx.Response, body=body)


@pytest.mark.parametrize("endpoint", EVERY, ids=lambda e: e.path)
def test_every_entry_is_whole(endpoint: Endpoint) -> None:
    config = SimConfig()
    example = dict(endpoint.example)
    # Every request is routed by its model: a body without a string one must be a 400, never a KeyError.
    assert endpoint.rules.required[0] == "model" and "model" in endpoint.rules.checks
    endpoint.rules.check(example)
    # The token rule reads this endpoint's prompt text (the client's limiter charges with the same rule).
    assert request_texts(endpoint.path, example)
    assert endpoint.admission(endpoint.path, example) >= 1
    state = SimState(config, FakeClock())
    spec = state.model(example["model"])
    assert spec is not None, "an example must use a model the simulator serves by default"
    generated = endpoint.respond(config, spec, example, state.new_id, 1_700_000_000)
    assert generated.prompt_tokens >= 1


def test_the_batch_endpoints_are_the_registrys() -> None:
    assert LONGRUN_BATCH_ENDPOINTS is BATCH_ENDPOINTS
    assert set(BATCH_ENDPOINTS) == {e.path for e in EVERY if e.batchable}
    assert set(ONLINE_ENDPOINTS) == {e.path for e in EVERY if e.online}


@pytest.mark.parametrize("endpoint", [e for e in EVERY if e.online], ids=lambda e: e.path)
def test_every_online_entry_is_served(client: OpenAI, endpoint: Endpoint) -> None:
    response = post(client, endpoint.path, dict(endpoint.example))
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"]
    assert response.json()["model"] == endpoint.example["model"]
    # Wrong method on a registered route: the API's 405, not a 404.
    with pytest.raises(openai.APIStatusError) as exc:
        client.get(endpoint.path.removeprefix("/v1"), cast_to=httpx.Response)
    assert exc.value.status_code == 405


@pytest.mark.parametrize("endpoint", [e for e in EVERY if not e.online], ids=lambda e: e.path)
def test_a_batch_only_entry_is_not_served_online(client: OpenAI, endpoint: Endpoint) -> None:
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        post(client, endpoint.path, dict(endpoint.example))


@pytest.mark.parametrize("endpoint", EVERY, ids=lambda e: e.path)
def test_execute_answers_every_entry_with_its_own_generator(endpoint: Endpoint) -> None:
    state = SimState(SimConfig(), FakeClock())
    status, body = state.execute(endpoint.path, dict(endpoint.example), "org-registry", batch=True)
    assert status == 200
    spec = state.model(endpoint.example["model"])
    assert spec is not None
    expected = endpoint.respond(state.config, spec, endpoint.example, state.new_id, 0)
    assert set(body) == set(expected.body)  # the same shape as this endpoint's generator, not another's


def test_a_moderations_line_gets_a_moderation() -> None:
    state = SimState(SimConfig(), FakeClock())
    status, body = state.execute("/v1/moderations", {"model": "gpt-4o-mini", "input": ["a", "b"]}, "org-m", batch=True)
    assert status == 200
    assert body["id"].startswith("modr-") and "object" not in body and "output" not in body
    assert [r["flagged"] for r in body["results"]] == [False, False]
    assert state.stats()["usage"]["org-m"]["cost_usd"] == 0.0  # moderations are free


@pytest.mark.parametrize("path", [*ENDPOINTS, "/v1/nope"])
def test_execute_without_a_model_is_a_400_or_404_never_an_exception(path: str) -> None:
    state = SimState(SimConfig(), FakeClock())
    status, body = state.execute(path, {"input": "no model", "messages": [{"role": "user", "content": "x"}]}, "o")
    if path in ENDPOINTS:
        assert status == 400
        assert body["error"]["param"] == "model" and body["error"]["code"] == "missing_required_parameter"
    else:
        assert status == 404 and body["error"]["message"] == "Invalid URL (POST /v1/nope)"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = json_values | st.fixed_dictionaries(
    {}, optional={"model": st.sampled_from(["gpt-4o-mini", "text-embedding-3-small", "nope"]) | json_values}
).flatmap(lambda base: st.dictionaries(st.sampled_from(["input", "messages", "prompt"]), json_values).map(base.__or__))
STATE = SimState(SimConfig(), FakeClock())


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from([*ENDPOINTS, "/v1/x"]), body=bodies)
def test_execute_never_raises(path: str, body: Any) -> None:
    status, out = STATE.execute(path, body, "org-fuzz", batch=True)
    assert status in (200, 400, 404)
    if status != 200:
        assert set(out["error"]) == {"message", "type", "param", "code"}


class _Recorder:
    """A stand-in for sim.longrun's store: what the core calls through the LongRunning protocol."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def advance(self) -> None:
        self.calls.append("advance")

    def create_background_response(self, org: str, body: Any) -> tuple[int, dict[str, Any]]:
        self.calls.append("background")
        return 200, {"id": "resp_recorded", "object": "response", "status": "queued"}

    def stats(self) -> dict[str, Any]:
        return {"recorded": len(self.calls)}

    def reset(self) -> None:
        self.calls.append("reset")

    def close(self) -> None:
        self.calls.append("close")


async def _asgi_post(app: Callable[..., Any], path: str, body: bytes) -> int:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"authorization", b"Bearer " + key().encode()), (b"content-type", b"application/json")],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_the_core_talks_to_longrun_only_through_its_protocol() -> None:
    state = SimState(SimConfig(), FakeClock())
    app = create_app(state)  # attaches sim.longrun's store
    recorder = _Recorder()
    state.longrun = recorder  # any LongRunning will do: the core never reaches past the protocol
    body = b'{"model": "gpt-4o-mini", "input": "later", "background": true}'
    assert await _asgi_post(app, "/v1/responses", body) == 200
    assert recorder.calls == ["advance", "background"]
    assert state.stats()["longrun"] == {"recorded": 2}
    state.reset()
    assert recorder.calls[-1] == "reset"
    state.longrun = None  # nothing attached: background mode is refused, stats have no longrun section
    assert await _asgi_post(app, "/v1/responses", body) == 400
    assert "longrun" not in state.stats()
