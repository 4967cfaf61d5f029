from __future__ import annotations

import pytest

from ratepilot.limits.learning import infer_window, refusal_evidence
from ratepilot.protocol.errors import (
    ErrorClass,
    LimitKind,
    classify,
    headers_in_message,
    insufficient_quota_error,
    rate_limit_error,
    slow_down_error,
)
from ratepilot.protocol.headers import (
    DimensionState,
    RateLimitHeaders,
    format_duration,
    parse_duration,
    parse_try_again_in,
)
from ratepilot.protocol.tokens import admission_cost, count_text, estimate_prompt_tokens, reservation_tokens


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("1s", 1.0),
        ("8.64s", 8.64),
        ("6m0s", 360.0),
        ("28m48s", 1728.0),
        ("1h2m3.5s", 3723.5),
        ("20", 20.0),
        ("0s", 0.0),
        ("3.114s", 3.114),
        ("120ms", 0.12),
    ],
)
def test_parse_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "abc", "1x", "-1s", "s", "1s2", "nan"])
def test_parse_duration_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.012, "12ms"), (1.0, "1s"), (8.64, "8.64s"), (360, "6m0s"), (1728, "28m48s"), (0, "0s")]
)
def test_format_duration_matches_api(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_headers_roundtrip_and_missing() -> None:
    h = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
    }
    parsed = RateLimitHeaders.parse(h)
    assert parsed.requests is not None and parsed.requests.remaining == 59 and parsed.requests.reset == 1.0
    assert parsed.tokens is None  # incomplete dimension is not trusted
    assert RateLimitHeaders.parse({}).empty


def test_try_again_in_text() -> None:
    body = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.RPD, 2000, 2000, 1, 43.2)
    assert "Please try again in 43.2s." in body["error"]["message"]
    assert parse_try_again_in(body["error"]["message"]) == pytest.approx(43.2)


@pytest.mark.parametrize(
    ("kind", "limit", "used", "window"),
    [(LimitKind.RPM, 300, 12, 60.0), (LimitKind.TPM, 60_000, 59_100, 60.0), (LimitKind.RPD, 2_000, 2_000, 86_400.0)],
)
def test_a_429s_words_read_as_its_buckets_headers(kind: LimitKind, limit: int, used: int, window: float) -> None:
    """A 429 without x-ratelimit-* headers still says "Limit L, Used U": the same bucket its headers would show."""
    message = rate_limit_error("gpt-4o-mini", "org-x", kind, limit, used, 1, 0.2)["error"]["message"]
    seen = headers_in_message(message)
    state = seen.requests if kind.error_type == "requests" else seen.tokens
    other = seen.tokens if kind.error_type == "requests" else seen.requests
    assert state == DimensionState(limit, limit - used, pytest.approx(used * window / limit)) and other is None
    assert infer_window(state) == window  # the window the limiter infers is the one the message names
    # Headers the response did carry win; the message fills only what they lack.
    carried = DimensionState(limit, 7, 1.0)
    kept = RateLimitHeaders(carried, carried).or_else(seen)
    assert kept.requests is carried and kept.tokens is carried


@pytest.mark.parametrize(
    "message",
    [
        slow_down_error(2.0)["error"]["message"],  # names no bucket
        insufficient_quota_error()["error"]["message"],
        "Rate limit reached for m in organization o on requests per day (RPD): Limit 2000, Used 0, Requested 1.",
        "Rate limit reached for m in organization o on requests per min (RPM): Limit 0, Used 0, Requested 1.",
        "",
    ],
)
def test_a_message_that_names_no_usable_bucket_teaches_nothing(message: str) -> None:
    assert headers_in_message(message).empty


def test_a_project_refusal_reads_as_the_project_tokens() -> None:
    """ "... in project proj_a on tokens per min (TPM) ..." is the project's bucket: its -project-tokens family in
    the headers it lacks, and the ptpm dimension in the refusal's evidence, judged against those headers."""
    body = rate_limit_error("gpt-4o-mini", "org-x", LimitKind.TPM, 20_000, 19_900, 500, 1.2, project="proj_a")
    message = body["error"]["message"]
    assert "in project proj_a on tokens per min (TPM): Limit 20000, Used 19900, Requested 500." in message
    assert "organization" not in message
    seen = headers_in_message(message)
    assert seen.requests is None and seen.tokens is None
    assert seen.project_tokens == DimensionState(20_000, 100, pytest.approx(19_900 * 60 / 20_000))
    # No headers (or room in them): evidence of a shorter window in ptpm; no room: the minute bucket explains it.
    assert refusal_evidence(message, "tokens", RateLimitHeaders(None, None), 500) == ("ptpm",)
    roomy = RateLimitHeaders(None, DimensionState(1_000_000, 5, 1.0), DimensionState(20_000, 900, 1.0))
    assert refusal_evidence(message, "tokens", roomy, 500) == ("ptpm",)  # the org's tokens are not the judge
    full = RateLimitHeaders(None, DimensionState(1_000_000, 999_000, 1.0), DimensionState(20_000, 100, 1.0))
    assert refusal_evidence(message, "tokens", full, 500) == ()
    # A project's request or daily limit has no header family nor dimension: a full minute teaches nothing ...
    rpm = rate_limit_error("m", "org-x", LimitKind.RPM, 10, 10, 1, 6.0, project="proj_a")["error"]["message"]
    assert headers_in_message(rpm).empty and refusal_evidence(rpm, "requests", {}, 1) == ()
    # ... but a project's request refusal with room in its minute is a shorter window, met in the scope's rpm.
    roomy_rpm = rate_limit_error("m", "org-x", LimitKind.RPM, 1_200, 40, 1, 0.05, project="proj_a")
    assert refusal_evidence(roomy_rpm["error"]["message"], "requests", {}, 1) == ("rpm",)
    # A project name with a space is still the project's bucket, never the organization's.
    spaced = rate_limit_error("m", "org-x", LimitKind.TPM, 20_000, 19_900, 500, 1.2, project="proj b")
    spaced_seen = headers_in_message(spaced["error"]["message"])
    assert spaced_seen.tokens is None and spaced_seen.project_tokens is not None
    # An over-full bucket (Used past the Limit, after settling) keeps the longer reset its header would show.
    over = rate_limit_error("m", "org-x", LimitKind.TPM, 1_000, 1_500, 100, 30.0)["error"]["message"]
    assert headers_in_message(over).tokens == DimensionState(1_000, 0, pytest.approx(90.0))
    # The organization's own refusal is unchanged.
    org = rate_limit_error("m", "org-x", LimitKind.TPM, 1_000, 900, 500, 1.0)["error"]["message"]
    assert headers_in_message(org).tokens is not None and refusal_evidence(org, "tokens", {}, 500) == ("tpm",)


def test_classify_quota_is_never_retryable() -> None:
    info = classify(429, insufficient_quota_error())
    assert info.error_class is ErrorClass.QUOTA and not info.retryable
    assert classify(429, insufficient_quota_error("credit_balance_exhausted")).error_class is ErrorClass.QUOTA
    assert classify(429, rate_limit_error("m", "o", LimitKind.TPM, 1, 1, 1, 1)).retryable
    assert classify(503, None).retryable
    assert not classify(400, {"error": {"message": "bad", "type": "invalid_request_error"}}).retryable


def test_tokenizer_offline_and_estimates() -> None:
    assert count_text("hello world", "gpt-4o") == 2
    assert count_text("hello world", "gpt-4") == 2
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 5, "n": 3}
    assert admission_cost("/v1/chat/completions", body) == 15  # n × max_tokens beats ceil(40 / 4)
    multimodal = {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
            },
        ],
    }
    assert estimate_prompt_tokens("/v1/chat/completions", multimodal) > 765
    assert admission_cost("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]]}) == 4


@pytest.mark.parametrize(
    "body",
    [{"messages": 5, "tools": True}, {"messages": [{"role": "user", "tool_calls": "x"}]}, {"input": {"a": 1}}, {}],
)
def test_estimates_never_raise_on_odd_shapes(body: dict[str, object]) -> None:
    for endpoint in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"):
        assert admission_cost(endpoint, body) >= 0
        assert estimate_prompt_tokens(endpoint, body) >= 0


CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "x" * 400}]  # 100 tokens by the server's chars/4 rule


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (CHAT, {"messages": MSG}, 100),
        (CHAT, {"messages": MSG, "max_tokens": 150}, 150),
        (CHAT, {"messages": MSG, "max_completion_tokens": 60, "n": 3}, 180),  # n x the cap
        ("/v1/responses", {"input": "x" * 400, "max_output_tokens": 300}, 300),
        ("/v1/responses", {"input": "x" * 40, "instructions": "y" * 40}, 20),
        ("/v1/completions", {"prompt": "x" * 400, "max_tokens": 10, "n": 2}, 100),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [11, 22, 33]}, 3),  # one token array
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, 2], [3]]}, 3),  # a list of them
    ],
)
def test_admission_cost_follows_the_servers_rule(endpoint: str, body: dict[str, object], expected: int) -> None:
    assert admission_cost(endpoint, body) == expected


def test_embeddings_inputs_are_counted_with_the_tokenizer() -> None:
    one = admission_cost("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello world"})
    assert one == count_text("hello world", "text-embedding-3-small") == 2
    many = admission_cost("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["hello world", "hi"]})
    assert many == 2 + count_text("hi")


def test_images_tool_calls_and_responses_items_are_counted_without_crashing() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}, image]}]}
    assert admission_cost(CHAT, chat) == 10 + 765
    tool_turn = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "x" * 40},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"enum": {1, 2}}}}],  # a set: not JSON
    }
    assert admission_cost(CHAT, tool_turn) >= 10 and estimate_prompt_tokens(CHAT, tool_turn) >= 10
    items = {
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "x" * 40}, {"type": "input_image", "image_url": "u"}],
            },
            {"type": "function_call_output", "call_id": "c1", "output": "y" * 40},
        ]
    }
    assert admission_cost("/v1/responses", items) >= 10 + 765
    assert estimate_prompt_tokens("/v1/responses", items) > 765


def test_reservation_tokens_mirror_the_server_or_count_with_the_tokenizer() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5, "n": 2}
    assert reservation_tokens(CHAT, body) == admission_cost(CHAT, body)
    assert reservation_tokens(CHAT, body, "tokenizer") == estimate_prompt_tokens(CHAT, body) + 10
    with pytest.raises(ValueError, match="unknown token estimate"):
        reservation_tokens(CHAT, body, "guess")
