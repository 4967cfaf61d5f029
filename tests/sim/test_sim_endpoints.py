"""Endpoints and content through the official SDK: responders, usage, streaming, embeddings, errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx2
import openai
import pytest

from ratepilot.protocol.errors import invalid_api_key_error, model_not_found_error
from ratepilot.protocol.tokens import count_text, estimate_prompt_tokens
from ratepilot.sim import SimConfig, Simulator

from .conftest import new_key, user

MODEL = "gpt-4o-mini"


def test_echo_usage_counted_with_real_tokenizer(shared_sim: Simulator, sync_client: Any) -> None:
    client = sync_client(shared_sim)
    text = "The quick brown fox jumps over the lazy dog. ünïcödé ✓"
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "be brief"}, *user(text)])
    assert out.choices[0].message.content == text
    assert out.choices[0].finish_reason == "stop"
    body = {"messages": [{"role": "system", "content": "be brief"}, *user(text)]}
    assert out.usage is not None
    assert out.usage.prompt_tokens == estimate_prompt_tokens("/v1/chat/completions", body, MODEL)
    assert out.usage.completion_tokens == count_text(text, MODEL)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")


def test_finish_reason_length_and_n(shared_sim: Simulator, sync_client: Any) -> None:
    client = sync_client(shared_sim)
    out = client.chat.completions.create(model=MODEL, messages=user("one two three four five six"), max_tokens=3, n=2)
    assert [c.finish_reason for c in out.choices] == ["length", "length"]
    assert out.choices[0].message.content == "one two three"
    assert out.usage is not None and out.usage.completion_tokens == 6
    out = client.chat.completions.create(model=MODEL, messages=user("alpha beta"), max_completion_tokens=1)
    assert out.choices[0].finish_reason == "length"


def test_fixed_classifier_and_callable_responders(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    fixed = sync_client(make_sim(responder="fixed", fixed_text="Always this."))
    assert fixed.chat.completions.create(model=MODEL, messages=user("x")).choices[0].message.content == "Always this."

    classifier = sync_client(make_sim(responder="classify", classify_pattern=r"(?i)refund"))
    ask = classifier.chat.completions.create
    assert ask(model=MODEL, messages=user("I want a REFUND now")).choices[0].message.content == "YES"
    assert ask(model=MODEL, messages=user("Nice product")).choices[0].message.content == "NO"

    def reverse(endpoint: str, body: Mapping[str, Any]) -> str:
        return f"{endpoint}:{body['messages'][-1]['content'][::-1]}"

    custom = sync_client(make_sim(responder=reverse))
    out = custom.chat.completions.create(model=MODEL, messages=user("abc"))
    assert out.choices[0].message.content == "/v1/chat/completions:cba"


def test_streaming_sync_with_usage_chunk(shared_sim: Simulator, sync_client: Any) -> None:
    client = sync_client(shared_sim)
    text = "streamed words arrive one by one"
    stream = client.chat.completions.create(
        model=MODEL, messages=user(text), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_text(text, MODEL)
    assert all(c.usage is None for c in chunks[:-1])


async def test_streaming_async_without_usage(shared_sim: Simulator, async_client: Any) -> None:
    client = async_client(shared_sim)
    stream = await client.chat.completions.create(model=MODEL, messages=user("a b c d"), stream=True, max_tokens=2)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


async def test_async_endpoints(shared_sim: Simulator, async_client: Any) -> None:
    client = async_client(shared_sim)
    out = await client.responses.create(model=MODEL, input="hello responses")
    assert out.output_text == "hello responses" and out.status == "completed"
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 1536


def test_embeddings_deterministic_dimensions_and_base64(shared_sim: Simulator, sync_client: Any) -> None:
    client = sync_client(shared_sim)
    # The SDK asks for base64 unless told otherwise, and decodes it; float must give the same numbers.
    default = client.embeddings.create(model="text-embedding-3-small", input="same text")
    floats = client.embeddings.create(model="text-embedding-3-small", input="same text", encoding_format="float")
    assert default.data[0].embedding == floats.data[0].embedding
    assert len(default.data[0].embedding) == 1536
    assert abs(sum(v * v for v in default.data[0].embedding) - 1.0) < 1e-4
    other = client.embeddings.create(model="text-embedding-3-small", input="other text")
    assert other.data[0].embedding != default.data[0].embedding
    small = client.embeddings.create(model="text-embedding-3-large", input=["x", "y", "z"], dimensions=8)
    assert [len(d.embedding) for d in small.data] == [8, 8, 8] and [d.index for d in small.data] == [0, 1, 2]
    assert small.usage.prompt_tokens == 3 == small.usage.total_tokens
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)  # base64 on the wire
    tokens = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]])
    assert tokens.usage.prompt_tokens == 4
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=5000)
    assert exc.value.param == "dimensions"


def test_responses_and_completions(shared_sim: Simulator, sync_client: Any) -> None:
    client = sync_client(shared_sim)
    out = client.responses.create(model=MODEL, input=[{"role": "user", "content": "x y z w"}], max_output_tokens=2)
    assert out.status == "incomplete" and out.incomplete_details is not None
    assert out.incomplete_details.reason == "max_output_tokens"
    assert out.output_text == "x y" and out.usage is not None and out.usage.output_tokens == 2
    comp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="legacy prompt")
    assert comp.choices[0].text == "legacy prompt" and comp.object == "text_completion"
    assert comp.usage is not None and comp.usage.prompt_tokens == count_text("legacy prompt", "gpt-3.5-turbo-instruct")
    stream = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="p q r", stream=True)
    assert "".join(c.choices[0].text for c in stream) == "p q r"


def test_models_endpoints(shared_sim: Simulator, sync_client: Any) -> None:
    client = sync_client(shared_sim)
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and "text-embedding-3-small" in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("gpt-nope")
    assert exc.value.response.json() == model_not_found_error("gpt-nope")


def test_error_bodies(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(max_body_bytes=2_000)
    client = sync_client(sim)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-nope", messages=user("x"))
    assert nf.value.response.json() == model_not_found_error("gpt-nope")

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages="not a list")  # type: ignore[arg-type]
    assert bad.value.param == "messages" and bad.value.code == "invalid_type"
    assert bad.value.body["message"] == "Invalid type for 'messages': expected an array, but got a string instead."  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=7)
    assert bad.value.param == "temperature" and bad.value.code == "decimal_above_max_value"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc,list-item]
    assert bad.value.param == "messages[0].role"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=user("x"), stream_options={"include_usage": True})
    assert bad.value.param == "stream_options"

    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model=MODEL, messages=user("x" * 5_000))
    assert big.value.status_code == 413 and big.value.code == "request_too_large"

    with pytest.raises(openai.BadRequestError) as ctx:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=user("hi"), max_tokens=20_000)
    assert ctx.value.code == "context_length_exceeded"

    with httpx2.Client(base_url=sim.url) as http:
        missing = http.post("/v1/chat/completions", json={"model": MODEL, "messages": user("x")})
        assert missing.status_code == 401 and missing.json() == invalid_api_key_error(None)
        headers = {"Authorization": f"Bearer {new_key()}"}
        broken = http.post("/v1/chat/completions", content=b"{not json", headers=headers)
        assert broken.status_code == 400 and broken.json()["error"]["message"].startswith("We could not parse the JSON")
        unknown = http.get("/v1/nothing-here", headers=headers)
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": {
                "message": "Invalid URL (GET /v1/nothing-here)",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        wrong_method = http.delete("/v1/chat/completions", headers=headers)
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
        for response in (missing, broken, unknown):
            assert response.headers["x-request-id"].startswith("req_")


def test_faults_500_503_missing_headers(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    from ratepilot.sim import FaultConfig

    client = sync_client(make_sim(faults=FaultConfig(error_500=1.0)))
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=MODEL, messages=user("x"))
    assert exc.value.status_code == 500 and exc.value.type == "server_error"
    client = sync_client(make_sim(faults=FaultConfig(error_503=1.0)))
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=MODEL, messages=user("x"))
    assert exc.value.status_code == 503 and "overloaded" in exc.value.message

    sim = make_sim(faults=FaultConfig(missing_headers=1.0))
    raw = sync_client(sim).chat.completions.with_raw_response.create(model=MODEL, messages=user("x"))
    assert not any(h.startswith("x-ratelimit") for h in raw.headers)
    assert raw.headers["x-request-id"]
    assert sim.stats()["faults"] == {"missing_headers": 1}

    sim = make_sim(rpm=1, faults=FaultConfig(missing_headers_on_429=True))
    client = sync_client(sim)
    assert (
        "x-ratelimit-limit-requests"
        in client.chat.completions.with_raw_response.create(model=MODEL, messages=user("x")).headers
    )
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=MODEL, messages=user("x"))
    assert "x-ratelimit-limit-requests" not in limited.value.response.headers


def test_faults_are_seeded_rates(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    from ratepilot.sim import FaultConfig

    def run() -> list[int]:
        client = sync_client(make_sim(faults=FaultConfig(error_500=0.3), seed=7))
        codes = []
        for _ in range(30):
            try:
                client.chat.completions.create(model=MODEL, messages=user("x"))
                codes.append(200)
            except openai.InternalServerError:
                codes.append(500)
        return codes

    first = run()
    assert first == run()  # same seed, same faults
    assert 3 <= first.count(500) <= 18


def test_fault_dropped_connection(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    from ratepilot.sim import FaultConfig

    sim = make_sim(faults=FaultConfig(drop=1.0))
    client = sync_client(sim)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=user("x"))
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(model=MODEL, messages=user("a b c d e f"), stream=True))
    assert sim.stats()["faults"]["drop"] == 2


def test_fault_stall_triggers_client_timeout(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    from ratepilot.sim import FaultConfig

    sim = make_sim(faults=FaultConfig(stall=1.0, stall_s=30))
    client = sync_client(sim, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=user("x"))


def test_latency_model(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    import time

    client = sync_client(make_sim(latency_ms=80, latency_per_token_ms=10))
    started = time.perf_counter()
    client.chat.completions.create(model=MODEL, messages=user("one two three four five"))
    assert time.perf_counter() - started >= 0.08 + 5 * 0.01 - 0.005


def test_stats_and_reset(make_sim: Callable[..., Simulator], sync_client: Any) -> None:
    sim = make_sim(rpm=1)
    key = new_key()
    client = sync_client(sim, key)
    client.chat.completions.create(model=MODEL, messages=user("x"))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=user("x"))
    with httpx2.Client(base_url=sim.url) as http:
        stats = http.get("/sim/stats").json()
        assert stats == sim.stats()
        assert stats["requests"]["by_status"] == {"200": 1, "429": 1}
        assert stats["rate_limited"]["RPM"] == 1
        (org_usage,) = stats["usage"].values()
        assert org_usage["requests"] == 2 and org_usage["total_tokens"] > 0 and org_usage["cost_usd"] > 0
        assert stats["keys"] == {f"sk-...{key[-4:]}": {"org": next(iter(stats["usage"])), "requests": 2}}
        assert key not in http.get("/sim/stats").text  # keys never appear in full
        assert http.post("/sim/reset").json() == {"ok": True}
    assert sim.stats()["requests"]["total"] == 0
    client.chat.completions.create(model=MODEL, messages=user("x"))  # buckets were reset too


def test_config_from_toml(tmp_path: Any, sync_client: Any) -> None:
    from ratepilot.sim import ConfigError

    path = tmp_path / "sim.toml"
    path.write_text(
        """
credit_usd = 5.0
responder = "classify"
classify_pattern = "(?i)urgent"

[limits]
rpm = 100
tpm = 50000

[models."my-model"]
kind = "chat"
rpm = 2

[pools.fours]
models = ["gpt-4o", "gpt-4o-mini"]
tpm = 1000

[keys."sk-test-configured-1"]
org = "org-one"

[prices."my-model"]
input = 1.0
output = 2.0

[latency]
base_ms = 0

[faults]
error_500 = 0.0
"""
    )
    config = SimConfig.from_toml(path, rpm=7)
    assert config.rpm == 7 and config.tpm == 50_000 and config.credit_usd == 5.0
    with Simulator(config) as sim:
        client = sync_client(sim, "sk-test-configured-1")
        raw = client.chat.completions.with_raw_response.create(model="my-model", messages=user("urgent!"))
        assert raw.parse().choices[0].message.content == "YES"
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["openai-organization"] == "org-one"
        pooled = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("calm"))
        assert pooled.headers["x-ratelimit-limit-tokens"] == "1000"
        assert pooled.parse().choices[0].message.content == "NO"
    bad = tmp_path / "bad.toml"
    for text, field in (
        ("[limits]\nrpm = 'many'", "limits.rpm"),
        ("[faults]\nerror_500 = 2.0", "faults.error_500"),
        ("[pools.p]\nmodels = 3", "pools.p.models"),
        ("colour = 'blue'", "colour"),
        ("[limits\n", "invalid TOML"),
    ):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(field)):
            SimConfig.from_toml(bad)


async def test_async_context_manager(async_client: Any) -> None:
    async with Simulator(SimConfig(rpm=5)) as sim:
        client = async_client(sim)
        out = await client.chat.completions.create(model=MODEL, messages=user("async with"))
        assert out.choices[0].message.content == "async with"
        assert sim.stats()["requests"]["by_status"] == {"200": 1}


def test_execute_is_the_pipeline_without_limits_and_bills_batch_at_half() -> None:
    from ratepilot.sim import SimState

    state = SimState(SimConfig(rpm=1))
    body = {"model": MODEL, "messages": user("batched line")}
    for _ in range(3):  # rpm=1 does not apply: no rate limiting here
        status, out = state.execute("/v1/chat/completions", body, "org-batch", batch=True)
        assert status == 200 and out["choices"][0]["message"]["content"] == "batched line"
    sync_cost = state.config.prices.cost(MODEL, out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"])
    assert state.stats()["usage"]["org-batch"]["cost_usd"] == pytest.approx(3 * sync_cost / 2)
    assert state.execute("/v1/chat/completions", {"model": "nope", "messages": user("x")}, "org-batch")[0] == 404
    status, err = state.execute("/v1/embeddings", {"model": "text-embedding-3-small"}, "org-batch")
    assert status == 400 and err["error"]["param"] == "input"
