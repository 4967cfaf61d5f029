"""Validation of a Batch API input file, as the service does it while the batch is ``validating``.

A pure function from the file's bytes to either the parsed lines or the ``errors.data`` entries the batch
fails with. Codes follow what users report from the real service (``invalid_json_line``,
``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``, ``empty_file``, ``too_many_tasks``); the
real service's exact wording is unpublished, so messages are modelled on its sync-API phrasing. Lines are
1-based physical lines of the file; file-wide errors have ``line: null``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ...protocol.tokens import estimate_prompt_tokens
from ..endpoints import ENDPOINTS, count_embedding_inputs

__all__ = [
    "MAX_REPORTED_ERRORS",
    "BatchLine",
    "BatchValidation",
    "batch_error",
    "count_embedding_inputs",
    "validate_batch_input",
]

MAX_REPORTED_ERRORS = 100
"""At most this many line errors are listed (a 50,000-line file of garbage must not make a huge object)."""


@dataclass(frozen=True, slots=True)
class BatchLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class BatchValidation:
    """Outcome: ``errors`` empty means the batch may run ``lines`` for ``model``."""

    lines: tuple[BatchLine, ...] = ()
    model: str | None = None
    enqueued_tokens: int = 0
    errors: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.errors


def batch_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    """One entry of a batch's ``errors.data``."""
    return {"code": code, "line": line, "message": message, "param": param}


def _line_error(number: int, raw: bytes, endpoint: str) -> tuple[dict[str, Any] | None, BatchLine | None]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return batch_error("invalid_json_line", "This line is not parseable as valid JSON.", number), None
    if not isinstance(obj, dict):
        return batch_error(
            "invalid_json_line",
            "This line is valid JSON but not an object; each line must be a request object.",
            number,
        ), None
    for name in ("custom_id", "method", "url", "body"):
        if name not in obj:
            return batch_error(
                "missing_required_parameter", f"Missing required parameter: '{name}'.", number, name
            ), None
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return batch_error(
            "invalid_type",
            f"Invalid type for 'custom_id': expected a non-empty string, but got {_json_type(custom_id)} instead.",
            number,
            "custom_id",
        ), None
    if obj["method"] != "POST":
        return batch_error(
            "invalid_method", f"Invalid method '{obj['method']}': only 'POST' is supported.", number, "method"
        ), None
    if obj["url"] != endpoint:
        return batch_error(
            "url_mismatch",
            f"The provided URL '{obj['url']}' does not match the batch endpoint '{endpoint}'.",
            number,
            "url",
        ), None
    body = obj["body"]
    if not isinstance(body, dict):
        return batch_error(
            "invalid_type",
            f"Invalid type for 'body': expected an object, but got {_json_type(body)} instead.",
            number,
            "body",
        ), None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return batch_error(
            "missing_required_parameter", "Missing required parameter: 'body.model'.", number, "body.model"
        ), None
    return None, BatchLine(number, custom_id, body)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def validate_batch_input(
    content: bytes,
    endpoint: str,
    *,
    max_requests: int = 50_000,
    max_bytes: int = 200 * 1024 * 1024,
    max_embedding_inputs: int = 50_000,
) -> BatchValidation:
    """Check a batch input file against ``endpoint`` and the per-batch limits."""
    if len(content) > max_bytes:
        return BatchValidation(
            errors=(
                batch_error(
                    "file_too_large",
                    f"The batch input file is larger than the {max_bytes} byte limit. Please split it into smaller "
                    "files.",
                ),
            )
        )
    raw_lines = content.split(b"\n")
    if raw_lines and raw_lines[-1].strip() == b"":
        raw_lines.pop()  # the newline that ends the last line is not an extra line
    if not content.strip():
        return BatchValidation(errors=(batch_error("empty_file", "The batch input file is empty."),))
    if len(raw_lines) > max_requests:
        return BatchValidation(
            errors=(
                batch_error(
                    "too_many_tasks",
                    f"The batch input file contains {len(raw_lines)} requests; the maximum is {max_requests} "
                    "requests per batch.",
                ),
            )
        )

    errors: list[dict[str, Any]] = []
    lines: list[BatchLine] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(raw_lines, start=1):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        error, parsed = _line_error(number, raw.rstrip(b"\r"), endpoint)
        if error is not None:
            errors.append(error)
            continue
        assert parsed is not None
        if parsed.custom_id in seen:
            errors.append(
                batch_error(
                    "duplicate_custom_id",
                    f"The custom_id '{parsed.custom_id}' is a duplicate of another request. The custom_id "
                    "parameter must be unique for each request in a batch.",
                    number,
                    "custom_id",
                )
            )
            continue
        seen.add(parsed.custom_id)
        line_model = str(parsed.body["model"])
        if model is None:
            model = line_model
        elif line_model != model:
            errors.append(
                batch_error(
                    "model_mismatch",
                    f"The model '{line_model}' does not match the model '{model}' of the other requests in this "
                    "file. A batch input file must contain requests for a single model.",
                    number,
                    "body.model",
                )
            )
            continue
        lines.append(parsed)
    if errors:
        return BatchValidation(errors=tuple(errors))

    registered = ENDPOINTS.get(endpoint)
    count_inputs = registered.batch_inputs if registered is not None else None
    if count_inputs is not None:
        inputs = sum(count_inputs(line.body) for line in lines)
        if inputs > max_embedding_inputs:
            return BatchValidation(
                errors=(
                    batch_error(
                        "too_many_tasks",
                        f"The batch input file contains {inputs} embedding inputs; the maximum is "
                        f"{max_embedding_inputs} embedding inputs across all requests in a batch.",
                    ),
                )
            )
    enqueued = sum(estimate_prompt_tokens(endpoint, line.body, model) for line in lines)
    return BatchValidation(lines=tuple(lines), model=model, enqueued_tokens=enqueued)
