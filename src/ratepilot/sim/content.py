"""What the simulator answers: deterministic responders and the response bodies of each endpoint.

One :data:`Generator` per endpoint (:func:`chat`, :func:`completions`, :func:`embeddings`, :func:`responses`,
:func:`moderations`); the endpoint registry (:mod:`ratepilot.sim.endpoints`) says which serves which path.

Pure functions of (config, request body): no I/O, no clock (timestamps and ids are passed in). Usage is
counted with the real tokenizer (:mod:`ratepilot.protocol.tokens`), so the numbers a client sees are the
numbers the real API would report for the same text.

Responders (``SimConfig.responder``):

* ``echo`` — the text of the last user message (or the prompt / input);
* ``fixed`` — ``SimConfig.fixed_text``;
* ``classify`` — ``classify_yes`` if ``classify_pattern`` (a regex) matches the prompt text, else ``classify_no``;
* a Python callable ``(endpoint, body) -> str``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import error_body
from ..protocol.tokens import encoding_for_model as _encoding_for_model
from ..protocol.tokens import estimate_prompt_tokens, request_texts
from .config import ModelSpec, SimConfig
from .validation import ApiError

__all__ = [
    "Generated",
    "Generator",
    "chat",
    "completions",
    "embedding_vector",
    "embeddings",
    "moderations",
    "prompt_text",
    "reply_text",
    "responses",
    "wrong_model_kind",
]

IdFactory = Callable[[str], str]

# The model -> encoding resolution is pure; memoised here because it runs twice per request.
encoding_for_model = functools.lru_cache(maxsize=256)(_encoding_for_model)


@dataclass(frozen=True, slots=True)
class Generated:
    """A successful response body and the usage it reports (for settling and billing)."""

    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    text: str = ""  # the (per-choice) reply text, for streaming

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Generator = Callable[[SimConfig, ModelSpec, Mapping[str, Any], IdFactory, int], Generated]
"""One endpoint's answer: ``(config, model, body, new_id, now) -> Generated``; raises :class:`ApiError`."""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def prompt_text(endpoint: str, body: Mapping[str, Any]) -> str:
    """The text a responder reacts to: the last user message, the prompt, or the input."""
    if endpoint == "/v1/chat/completions":
        for msg in reversed(body.get("messages") or []):
            if isinstance(msg, Mapping) and msg.get("role") == "user":
                return _content_text(msg.get("content"))
        return ""
    if endpoint == "/v1/responses":
        inp = body.get("input")
        if isinstance(inp, str):
            return inp
        if isinstance(inp, list):
            for item in reversed(inp):
                if isinstance(item, Mapping) and item.get("role", "user") == "user":
                    return _content_text(item.get("content"))
        return ""
    texts = request_texts(endpoint, body)
    return texts[0] if texts else ""


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def reply_text(config: SimConfig, endpoint: str, body: Mapping[str, Any]) -> str:
    responder = config.responder
    if callable(responder):
        return str(responder(endpoint, body))
    if responder == "fixed":
        return config.fixed_text
    if responder == "classify":
        matched = _compiled(config.classify_pattern).search(prompt_text(endpoint, body)) is not None
        return config.classify_yes if matched else config.classify_no
    return prompt_text(endpoint, body)


def _limit_of(body: Mapping[str, Any], *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def _truncate(text: str, model: str, max_tokens: int | None, stop: Any) -> tuple[str, int, str]:
    """Apply stop sequences and the token cap; returns (text, tokens, finish_reason)."""
    finish = "stop"
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str) and s]
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    enc = encoding_for_model(model)
    tokens = enc.encode(text, disallowed_special=())
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens = tokens[:max_tokens]
        text = enc.decode(tokens)
        finish = "length"
    return text, len(tokens), finish


def _context_check(spec: ModelSpec, prompt_tokens: int, max_out: int | None, param: str | None) -> None:
    total = prompt_tokens + (max_out or 0)
    if total > spec.context_window:
        raise ApiError(
            400,
            error_body(
                f"This model's maximum context length is {spec.context_window} tokens. However, you requested "
                f"{total} tokens ({prompt_tokens} in the messages, {max_out or 0} in the completion). Please reduce "
                "the length of the messages or completion.",
                "invalid_request_error",
                "context_length_exceeded",
                param,
            ),
        )


def _chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _n(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def chat(config: SimConfig, spec: ModelSpec, body: Mapping[str, Any], new_id: IdFactory, now: int) -> Generated:
    endpoint = "/v1/chat/completions"
    max_out = _limit_of(body, "max_completion_tokens", "max_tokens")
    prompt_tokens = estimate_prompt_tokens(endpoint, body, spec.id)
    _context_check(spec, prompt_tokens, max_out, "messages")
    text, tokens, finish = _truncate(reply_text(config, endpoint, body), spec.id, max_out, body.get("stop"))
    n = _n(body)
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": finish,
        }
        for i in range(n)
    ]
    out = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": now,
        "model": spec.id,
        "choices": choices,
        "usage": _chat_usage(prompt_tokens, tokens * n),
        "service_tier": "default",
        "system_fingerprint": "fp_ratepilot_sim",
    }
    return Generated(out, prompt_tokens, tokens * n, text)


def completions(config: SimConfig, spec: ModelSpec, body: Mapping[str, Any], new_id: IdFactory, now: int) -> Generated:
    endpoint = "/v1/completions"
    max_out = _limit_of(body, "max_tokens", default=16)
    prompt_tokens = estimate_prompt_tokens(endpoint, body, spec.id)
    _context_check(spec, prompt_tokens, max_out, "prompt")
    text, tokens, finish = _truncate(reply_text(config, endpoint, body), spec.id, max_out, body.get("stop"))
    n = _n(body)
    choices = [{"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(n)]
    out = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": now,
        "model": spec.id,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens * n,
            "total_tokens": prompt_tokens + tokens * n,
        },
        "system_fingerprint": "fp_ratepilot_sim",
    }
    return Generated(out, prompt_tokens, tokens * n, text)


def responses(config: SimConfig, spec: ModelSpec, body: Mapping[str, Any], new_id: IdFactory, now: int) -> Generated:
    endpoint = "/v1/responses"
    max_out = _limit_of(body, "max_output_tokens")
    prompt_tokens = estimate_prompt_tokens(endpoint, body, spec.id)
    _context_check(spec, prompt_tokens, max_out, "input")
    text, tokens, finish = _truncate(reply_text(config, endpoint, body), spec.id, max_out, None)
    incomplete = finish == "length"
    out = {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": now,
        "status": "incomplete" if incomplete else "completed",
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": max_out,
        "model": spec.id,
        "output": [
            {
                "id": new_id("msg_"),
                "type": "message",
                "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + tokens,
        },
        "metadata": body.get("metadata") or {},
    }
    return Generated(out, prompt_tokens, tokens, text)


@functools.lru_cache(maxsize=4096)
def embedding_vector(model: str, dimensions: int, text: str) -> tuple[float, ...]:
    """A deterministic unit vector for (model, dimensions, text): same input, same vector, every run."""
    seed = hashlib.blake2b(f"{model}\x00{dimensions}\x00{text}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(seed, "little"))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    # float32 precision, like the real API's vectors (and so base64 round-trips exactly).
    return struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in vec)))


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [repr(value)]
    return [v if isinstance(v, str) else repr(v) for v in value or []]


def _all_ints(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _embedding_too_long(spec: ModelSpec, n: int) -> ApiError:
    return ApiError(
        400,
        error_body(
            f"This model's maximum context length is {spec.context_window} tokens, however you requested "
            f"{n} tokens ({n} in your prompt; 0 for the completion). Please reduce your prompt; or "
            "completion length.",
            "invalid_request_error",
            "context_length_exceeded",
            "input",
        ),
    )


def embeddings(config: SimConfig, spec: ModelSpec, body: Mapping[str, Any], new_id: IdFactory, now: int) -> Generated:
    dims = body.get("dimensions")
    if dims is None:
        dims = spec.dimensions
    elif dims > spec.dimensions or spec.id == "text-embedding-ada-002":
        raise ApiError(
            400,
            error_body(
                f"This model does not support specifying dimensions greater than {spec.dimensions}."
                if dims > spec.dimensions
                else "This model does not support specifying dimensions.",
                "invalid_request_error",
                "invalid_value",
                "dimensions",
            ),
        )
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    prompt_tokens = 0
    enc = encoding_for_model(spec.id)
    raw = body.get("input")
    for index, text in enumerate(_embedding_inputs(raw)):
        vec = embedding_vector(spec.id, dims, text)
        embedding: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_base64 else list(vec)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    if isinstance(raw, str):
        prompt_tokens = len(enc.encode(raw, disallowed_special=()))
    elif isinstance(raw, list) and _all_ints(raw):
        prompt_tokens = len(raw)
    else:
        for item in raw or []:
            n = len(item) if isinstance(item, list) else len(enc.encode(item, disallowed_special=()))
            if n > spec.context_window:
                raise _embedding_too_long(spec, n)
            prompt_tokens += n
    if (isinstance(raw, str) or _all_ints(raw)) and prompt_tokens > spec.context_window:
        raise _embedding_too_long(spec, prompt_tokens)
    out = {
        "object": "list",
        "data": data,
        "model": spec.id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return Generated(out, prompt_tokens, 0)


_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def _moderation_result(input_types: list[str]) -> dict[str, Any]:
    return {
        "flagged": False,
        "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 0.0),
        "category_applied_input_types": {c: list(input_types) for c in _MODERATION_CATEGORIES},
    }


def moderations(config: SimConfig, spec: ModelSpec, body: Mapping[str, Any], new_id: IdFactory, now: int) -> Generated:
    """A moderation that flags nothing: the simulator is about limits and lifecycles, not content policy.

    One result per input string; one for a list of multi-modal parts (as the real API answers). The real
    response carries no ``usage`` (moderations are free), so nothing is billed; the prompt tokens are still
    counted for settling the token buckets."""
    raw = body.get("input")
    if isinstance(raw, list) and any(isinstance(item, Mapping) for item in raw):
        kinds = {"text" if isinstance(p, str) or p.get("type") == "text" else "image" for p in raw}
        results = [_moderation_result(sorted(kinds))]
    else:
        results = [_moderation_result(["text"]) for _ in (raw if isinstance(raw, list) else [raw])]
    out = {"id": new_id("modr-"), "model": spec.id, "results": results}
    return Generated(out, estimate_prompt_tokens("/v1/moderations", body, spec.id), 0)


def wrong_model_kind(spec: ModelSpec, kind: str, endpoint: str) -> ApiError:
    """The 400 for a model of the wrong kind (an embeddings model on chat, a chat model on embeddings)."""
    if kind == "embedding":
        message = f"The model `{spec.id}` does not support embeddings."
    elif spec.kind == "embedding":
        message = f"The model `{spec.id}` is an embeddings model and is not supported on {endpoint}."
    else:
        message = f"The model `{spec.id}` is not supported on {endpoint}."
    return ApiError(400, error_body(message, "invalid_request_error", "invalid_model", "model"))
