"""No input crashes the simulator: hypothesis-generated methods, paths, headers and bodies, in process.

Every response must be a 2xx (well-formed JSON or SSE) or a 4xx with an OpenAI error body; never a 5xx and
never a traceback. Injected faults are off. The app is driven directly through ASGI for speed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, SimState, create_app
from ratepilot.sim.endpoints import ENDPOINTS, ONLINE_ENDPOINTS

APP = create_app(SimState(SimConfig(rpm=1_000_000, tpm=100_000_000, max_body_bytes=20_000), FakeClock()))
PATHS = [
    *ENDPOINTS,  # the batch-only ones too: they must answer a clean 404 online
    "/v1/models",
    "/v1/models/gpt-4o-mini",
    "/v1/models/nope",
    "/sim/stats",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)

# Message-shaped objects with the keys the token counter reads, holding arbitrary values.
messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool"]) | json_values},
    optional={
        key: json_values
        for key in ("content", "name", "tool_calls", "function_call", "output", "arguments", "type", "text")
    },
)

# Every endpoint served online, from the registry: a new endpoint is fuzzed without editing this file.
VALID = {path: dict(endpoint.example) for path, endpoint in ONLINE_ENDPOINTS.items()}
FIELDS = sorted({name for endpoint in ENDPOINTS.values() for name in endpoint.rules.checks})


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(list(VALID)))
    body: dict[str, Any] = dict(VALID[path])
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            body[field] = draw(json_values)
        else:
            body.pop(field, None)
    if draw(st.booleans()) and isinstance(body.get("messages"), list):
        body["messages"] = [draw(json_values | messages), *body["messages"]]
    if path == "/v1/responses" and draw(st.booleans()):
        body["input"] = [draw(json_values | messages)]
    return path, json.dumps(body).encode()


requests = st.one_of(
    mutated_bodies().map(lambda pb: ("POST", pb[0], pb[1])),
    st.tuples(
        st.sampled_from(METHODS),
        st.sampled_from(PATHS) | st.text(alphabet="/abcv1_-.%?", max_size=30).map(lambda s: "/" + s),
        st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    ),
)


async def call(method: str, path: str, body: bytes, auth: bool) -> tuple[int, dict[str, str], bytes]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if auth:
        headers.append((b"authorization", b"Bearer sk-test-fuzz-0001"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    status = 0
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers.update({k.decode(): v.decode() for k, v in message.get("headers", [])})
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await APP(scope, receive, send)
    return status, response_headers, b"".join(chunks)


def check(status: int, headers: dict[str, str], body: bytes) -> None:
    assert 200 <= status < 500, (status, body[:300])
    assert b"Traceback" not in body
    if status >= 400:
        err = orjson.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert isinstance(err["message"], str) and err["message"]
        assert err["param"] is None or isinstance(err["param"], str)
    elif headers.get("content-type", "").startswith("text/event-stream"):
        assert body.endswith(b"data: [DONE]\n\n")
    else:
        orjson.loads(body)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for all examples (a new loop per example costs more than the request)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request=requests, auth=st.booleans())
def test_no_input_crashes_the_server(
    loop: asyncio.AbstractEventLoop, request: tuple[str, str, bytes], auth: bool
) -> None:
    method, path, body = request
    check(*loop.run_until_complete(call(method, path, body, auth)))


def test_oversized_and_truncated_bodies() -> None:
    status, _, body = asyncio.run(call("POST", "/v1/chat/completions", b"x" * 30_000, True))
    assert status == 413 and orjson.loads(body)["error"]["code"] == "request_too_large"
    status, _, body = asyncio.run(call("POST", "/v1/embeddings", b'{"model": "text-embedding-3-small", "inp', True))
    assert status == 400


def test_zero_latency_never_awaits_a_timer(monkeypatch: Any) -> None:
    async def forbidden(*_a: Any, **_k: Any) -> None:
        raise AssertionError("asyncio.sleep called with latency_ms=0")

    monkeypatch.setattr(asyncio, "sleep", forbidden)
    for path, body in VALID.items():
        status, _, _ = asyncio.run(call("POST", path, orjson.dumps(body), True))
        assert status == 200
    stream = {**VALID["/v1/chat/completions"], "stream": True}
    assert asyncio.run(call("POST", "/v1/chat/completions", orjson.dumps(stream), True))[0] == 200
