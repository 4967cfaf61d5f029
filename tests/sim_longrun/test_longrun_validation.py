"""Batch input validation: every malformed-file kind gives the real failure shape with the right line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ratepilot.sim.longrun.batch_validation import validate_batch_input

EP = "/v1/chat/completions"


def line(custom_id: Any = "a", *, method: str = "POST", url: str = EP, model: str = "gpt-4o-mini", **extra: Any) -> str:
    obj: dict[str, Any] = {
        "custom_id": custom_id,
        "method": method,
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    }
    obj.update(extra)
    return json.dumps(obj)


def content(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def only_error(data: bytes, **kw: Any) -> dict[str, Any]:
    result = validate_batch_input(data, kw.pop("endpoint", EP), **kw)
    assert not result.ok
    assert len(result.errors) == 1, result.errors
    error = result.errors[0]
    assert set(error) == {"code", "line", "message", "param"}
    return error


def test_valid_file_parses_lines_model_and_enqueued_tokens() -> None:
    result = validate_batch_input(content(line("a"), line("b")), EP)
    assert result.ok
    assert [(x.line, x.custom_id) for x in result.lines] == [(1, "a"), (2, "b")]
    assert result.model == "gpt-4o-mini"
    assert result.enqueued_tokens > 0


def test_crlf_and_missing_final_newline_are_fine() -> None:
    data = (line("a") + "\r\n" + line("b")).encode()
    assert validate_batch_input(data, EP).ok


@pytest.mark.parametrize(
    ("lines", "code", "line_no", "param"),
    [
        ([line("a"), "{not json"], "invalid_json_line", 2, None),
        ([line("a"), "", line("b")], "invalid_json_line", 2, None),
        ([line("a"), "[1, 2]"], "invalid_json_line", 2, None),
        ([line("a"), line("b"), line("a")], "duplicate_custom_id", 3, "custom_id"),
        ([line("a"), line("b", method="GET")], "invalid_method", 2, "method"),
        ([line("a"), line("b", url="/v1/embeddings")], "url_mismatch", 2, "url"),
        ([line("a"), line("b", model="gpt-4o")], "model_mismatch", 2, "body.model"),
        ([line(7)], "invalid_type", 1, "custom_id"),
        (
            [line("a"), json.dumps({"custom_id": "b", "method": "POST", "url": EP})],
            "missing_required_parameter",
            2,
            "body",
        ),
        ([line("a", body="x")], "invalid_type", 1, "body"),
        (
            [json.dumps({"custom_id": "a", "method": "POST", "url": EP, "body": {}})],
            "missing_required_parameter",
            1,
            "body.model",
        ),
    ],
)
def test_line_errors(lines: list[str], code: str, line_no: int, param: str | None) -> None:
    error = only_error(content(*lines))
    assert (error["code"], error["line"], error["param"]) == (code, line_no, param)
    assert error["message"]


def test_several_bad_lines_are_all_reported_in_order() -> None:
    result = validate_batch_input(content(line("a"), "oops", line("a"), line("c", url="/v1/x")), EP)
    assert [(e["code"], e["line"]) for e in result.errors] == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("url_mismatch", 4),
    ]


def test_file_wide_errors_have_no_line() -> None:
    assert only_error(b"")["code"] == "empty_file"
    assert only_error(b"\n")["code"] == "empty_file"
    too_many = only_error(content(line("a"), line("b"), line("c")), max_requests=2)
    assert (too_many["code"], too_many["line"]) == ("too_many_tasks", None)
    big = only_error(content(line("a")), max_bytes=10)
    assert (big["code"], big["line"]) == ("file_too_large", None)


def test_embedding_inputs_are_counted_across_requests() -> None:
    ep = "/v1/embeddings"

    def emb(cid: str, inputs: Any) -> str:
        body = {"model": "text-embedding-3-small", "input": inputs}
        return json.dumps({"custom_id": cid, "method": "POST", "url": ep, "body": body})

    data = content(emb("a", ["x", "y", "z"]), emb("b", "w"), emb("c", [1, 2, 3]))
    assert validate_batch_input(data, ep, max_embedding_inputs=5).ok
    error = only_error(data, endpoint=ep, max_embedding_inputs=4)
    assert (error["code"], error["line"]) == ("too_many_tasks", None)
    assert "embedding inputs" in error["message"]
