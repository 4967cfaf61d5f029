"""Request-body validation with the API's 400 wording: every error names the offending ``param``.

One :class:`BodyRules` per endpoint (``CHAT``, ``EMBEDDINGS``, ...); the endpoint registry
(:mod:`ratepilot.sim.endpoints`) says which endpoint uses which.

Messages follow the real API's shapes (``Missing required parameter: 'model'.``, ``Invalid type for
'messages': expected an array, but got a string instead.``). Unknown top-level fields are accepted (the
real API rejects some, but SDK ``extra_body`` users rely on leniency and the simulator is not a linter).

Over 500 lines, one concept: the simulator's request validation, rule by rule, as the API words its 400s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import error_body

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "MODERATIONS",
    "RESPONSES",
    "ApiError",
    "BodyRules",
    "invalid_json",
    "invalid_url",
]


class ApiError(Exception):
    """An error response: status, OpenAI error body, extra headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def invalid_json() -> ApiError:
    return ApiError(
        400,
        error_body(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
            "If you have trouble figuring out how to fix this, please contact us through our help center at "
            "help.openai.com.)",
            "invalid_request_error",
        ),
    )


def invalid_url(method: str, path: str, status: int = 404) -> ApiError:
    """The real API's answer to an unknown route (404) or a known route with the wrong method (405)."""
    what = "Invalid URL" if status == 404 else "Invalid method for URL"
    return ApiError(status, error_body(f"{what} ({method} {path[:200]})", "invalid_request_error"))


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return "null" if value is None else "an unknown type"


def _bad(param: str, message: str, code: str) -> ApiError:
    return ApiError(400, error_body(message, "invalid_request_error", code, param))


def _type_error(param: str, expected: str, value: Any) -> ApiError:
    return _bad(
        param, f"Invalid type for '{param}': expected {expected}, but got {_got(value)} instead.", "invalid_type"
    )


def _missing(param: str) -> ApiError:
    return _bad(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _int_param(body: Mapping[str, Any], name: str, lo: int, hi: int | None = None) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if not _is_int(value):
        raise _type_error(name, "an integer", value)
    if value < lo:
        raise _bad(
            name,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got {value} instead.",
            "integer_below_min_value",
        )
    if hi is not None and value > hi:
        raise _bad(
            name,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got {value} instead.",
            "integer_above_max_value",
        )


def _number_param(body: Mapping[str, Any], name: str, lo: float, hi: float) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if not _is_number(value):
        raise _type_error(name, "a number", value)
    if value < lo:
        raise _bad(
            name,
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {lo}, but got {value} instead.",
            "decimal_below_min_value",
        )
    if value > hi:
        raise _bad(
            name,
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {hi}, but got {value} instead.",
            "decimal_above_max_value",
        )


def _bool_param(body: Mapping[str, Any], name: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], bool):
        raise _type_error(name, "a boolean", body[name])


def _str_param(body: Mapping[str, Any], name: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], str):
        raise _type_error(name, "a string", body[name])


def _model(body: Mapping[str, Any]) -> None:
    if "model" not in body or body["model"] is None:
        raise _missing("model")
    if not isinstance(body["model"], str):
        raise _type_error("model", "a string", body["model"])
    if not body["model"]:
        raise _bad("model", "Invalid 'model': empty string. Expected a string with minimum length 1.", "empty_string")


def _stop(body: Mapping[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _type_error("stop", "a string or an array of strings", stop)
    if len(stop) > 4:
        raise _bad(
            "stop", "Invalid 'stop': array too long. Expected an array with at most 4 items.", "array_above_max_length"
        )


def _stream(body: Mapping[str, Any]) -> None:
    _bool_param(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise _type_error("stream_options", "an object", options)
    if not body.get("stream"):
        raise _bad(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "invalid_value",
        )
    if "include_usage" in options and not isinstance(options["include_usage"], bool):
        raise _type_error("stream_options.include_usage", "a boolean", options["include_usage"])


Check = Callable[[Mapping[str, Any], str], None]
"""Validates one field: ``check(body, name)``; raises :class:`ApiError`."""


def _int(lo: int, hi: int | None = None) -> Check:
    return lambda body, name: _int_param(body, name, lo, hi)


def _num(lo: float, hi: float) -> Check:
    return lambda body, name: _number_param(body, name, lo, hi)


def _whole(check: Callable[[Mapping[str, Any]], None]) -> Check:
    return lambda body, _name: check(body)


_SAMPLING: dict[str, Check] = {
    "temperature": _num(0, 2),
    "top_p": _num(0, 1),
    "presence_penalty": _num(-2, 2),
    "frequency_penalty": _num(-2, 2),
    "n": _int(1, 128),
    "seed": _int(-(2**63), 2**63 - 1),
    "user": _str_param,
    "stop": _whole(_stop),
    "stream": _whole(_stream),
    "stream_options": _whole(_stream),
}


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _messages(body: Mapping[str, Any]) -> None:
    if "messages" not in body or body["messages"] is None:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise _bad(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "empty_array",
        )
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise _type_error(where, "an object", msg)
        role = msg.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if not isinstance(role, str):
            raise _type_error(f"{where}.role", "a string", role)
        if role not in _ROLES:
            raise _bad(
                f"{where}.role",
                f"Invalid value: '{role[:40]}'. Supported values are: {', '.join(repr(r) for r in _ROLES)}.",
                "invalid_value",
            )
        content = msg.get("content")
        if content is None:
            if role not in ("assistant", "function"):
                raise _missing(f"{where}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping):
                    raise _type_error(f"{where}.content[{j}]", "an object", part)
                if "type" not in part:
                    raise _missing(f"{where}.content[{j}].type")
                if not isinstance(part["type"], str):
                    raise _type_error(f"{where}.content[{j}].type", "a string", part["type"])
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _type_error(f"{where}.content[{j}].text", "a string", part.get("text"))
        elif not isinstance(content, str):
            raise _type_error(f"{where}.content", "one of a string or array of objects", content)
        if "name" in msg and msg["name"] is not None and not isinstance(msg["name"], str):
            raise _type_error(f"{where}.name", "a string", msg["name"])
        calls = msg.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise _type_error(f"{where}.tool_calls", "an array", calls)
            for j, call in enumerate(calls):
                if not isinstance(call, Mapping):
                    raise _type_error(f"{where}.tool_calls[{j}]", "an object", call)
        _object_param(msg, "function_call")


def _object_list(body: Mapping[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, list):
        raise _type_error(name, "an array", value)
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _type_error(f"{name}[{i}]", "an object", item)


def _object_param(body: Mapping[str, Any], name: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], Mapping):
        raise _type_error(name, "an object", body[name])


def _is_token_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(v) and v >= 0 for v in value)


def _text_or_tokens(body: Mapping[str, Any], name: str, *, required: bool, max_items: int) -> None:
    if name not in body or body[name] is None:
        if required:
            raise _missing(name)
        return
    value = body[name]
    if isinstance(value, str):
        if not value and name == "input":
            raise _bad(
                name,
                f"'$.{name}' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "invalid_value",
            )
        return
    if not isinstance(value, list):
        raise _type_error(name, "a string or an array", value)
    if not value:
        raise _bad(
            name,
            f"Invalid '{name}': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "empty_array",
        )
    if len(value) > max_items:
        raise _bad(
            name,
            f"Invalid '{name}': array too long. Expected an array with maximum length {max_items}, but got an array "
            f"with length {len(value)} instead.",
            "array_above_max_length",
        )
    if all(isinstance(v, str) for v in value):
        if name == "input" and any(not v for v in value):
            raise _bad(
                name,
                f"'$.{name}' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "invalid_value",
            )
        return
    if _is_token_array(value) or all(_is_token_array(v) for v in value):
        return
    raise _type_error(name, "a string, an array of strings, or an array of token arrays", value)


def _encoding_format(body: Mapping[str, Any], name: str) -> None:
    fmt = body.get(name)
    if fmt is None:
        return
    if not isinstance(fmt, str):
        raise _type_error(name, "a string", fmt)
    if fmt not in ("float", "base64"):
        raise _bad(name, f"Invalid value: '{fmt[:40]}'. Supported values are: 'float' and 'base64'.", "invalid_value")


SERVICE_TIERS = ("auto", "default", "flex", "priority", "fast", "scale")


def _service_tier(body: Mapping[str, Any], name: str) -> None:
    tier = body.get(name)
    if tier is None:
        return
    if not isinstance(tier, str):
        raise _type_error(name, "a string", tier)
    if tier not in SERVICE_TIERS:
        values = ", ".join(f"'{t}'" for t in SERVICE_TIERS)
        raise _bad(name, f"Invalid value: '{tier[:40]}'. Supported values are: {values}.", "invalid_value")


def _responses_input(body: Mapping[str, Any]) -> None:
    value = body.get("input")
    if value is None:
        raise _missing("input")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _type_error("input", "a string or an array", value)
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _type_error(f"input[{i}]", "an object", item)
        content = item.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _type_error(f"input[{i}].content", "a string or an array", content)
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping):
                    raise _type_error(f"input[{i}].content[{j}]", "an object", part)


def _responses_stream(body: Mapping[str, Any], name: str) -> None:
    _bool_param(body, name)
    if body.get(name):
        raise _bad(name, "Streaming of /v1/responses is not supported by the simulator.", "unsupported_value")


def _model_check(body: Mapping[str, Any], _name: str) -> None:
    _model(body)


def _moderation_input(body: Mapping[str, Any]) -> None:
    """A string, an array of strings, or an array of multi-modal parts (``{"type": "text" | "image_url", ...}``)."""
    value = body["input"]
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _type_error("input", "a string or an array", value)
    if not value:
        raise _bad(
            "input",
            "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "empty_array",
        )
    for i, item in enumerate(value):
        if isinstance(item, str):
            continue
        if not isinstance(item, Mapping):
            raise _type_error(f"input[{i}]", "a string or an object", item)
        if not isinstance(item.get("type"), str):
            raise _missing(f"input[{i}].type")


@dataclass(frozen=True, slots=True)
class BodyRules:
    """How one endpoint's request body is validated: its required fields, and a check per known field.

    Only the fields a body actually has are checked (in the body's order), which keeps validation cheap on the
    hot path; unknown fields are accepted. Every endpoint's rules require ``model`` first: the simulator
    routes every request by its model, so a body without one must be a 400 here, never a ``KeyError`` later.
    """

    required: tuple[str, ...]
    checks: Mapping[str, Check]

    def check(self, body: Any) -> None:
        """Raise :class:`ApiError` (400, with ``param``) if ``body`` is not a valid request."""
        if not isinstance(body, Mapping):
            raise ApiError(
                400,
                error_body(
                    f"Invalid type for request body: expected an object, but got {_got(body)} instead.",
                    "invalid_request_error",
                    "invalid_type",
                ),
            )
        for name in self.required:
            if body.get(name) is None:
                raise _missing(name)
        checks = self.checks
        for name in body:
            check = checks.get(name)
            if check is not None:
                check(body, name)


CHAT = BodyRules(
    ("model", "messages"),
    {
        "model": _model_check,
        "messages": _whole(_messages),
        "service_tier": _service_tier,
        "max_tokens": _int(1),
        "max_completion_tokens": _int(1),
        **_SAMPLING,
        "tools": _object_list,
        "response_format": _object_param,
        "metadata": _object_param,
        "logprobs": _bool_param,
        "parallel_tool_calls": _bool_param,
    },
)

EMBEDDINGS = BodyRules(
    ("model", "input"),
    {
        "model": _model_check,
        "input": lambda body, name: _text_or_tokens(body, name, required=True, max_items=2048),
        "dimensions": _int(1),
        "encoding_format": _encoding_format,
        "user": _str_param,
        "tools": _object_list,  # not an embeddings field, but the token estimate reads it on every endpoint
    },
)

COMPLETIONS = BodyRules(
    ("model", "prompt"),
    {
        "model": _model_check,
        "prompt": lambda body, name: _text_or_tokens(body, name, required=True, max_items=2048),
        "max_tokens": _int(0),
        "best_of": _int(1, 20),
        "suffix": _str_param,
        "echo": _bool_param,
        **_SAMPLING,
        "tools": _object_list,  # see EMBEDDINGS
    },
)

RESPONSES = BodyRules(
    ("model", "input"),
    {
        "model": _model_check,
        "input": _whole(_responses_input),
        "instructions": _str_param,
        "max_output_tokens": _int(1),
        "temperature": _num(0, 2),
        "top_p": _num(0, 1),
        "stream": _responses_stream,
        "background": _bool_param,
        "service_tier": _service_tier,
        "store": _bool_param,
        "tools": _object_list,
        "metadata": _object_param,
        "previous_response_id": _str_param,
    },
)

# The real API defaults a moderation's model to omni-moderation-latest; the simulator asks for one, as a batch
# input file must name its model anyway (and the simulator serves moderations only in batches).
MODERATIONS = BodyRules(
    ("model", "input"),
    {
        "model": _model_check,
        "input": _whole(_moderation_input),
        "tools": _object_list,  # see EMBEDDINGS
    },
)
