"""The requests reader: both line shapes, url inference, and errors that name the line and field."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from ratepilot.batch.blocks import parse_upload_block
from ratepilot.requests import (
    InvalidLine,
    RequestLine,
    RequestsFileError,
    infer_url,
    parse_line,
    read_requests,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _write(path: Path, lines: list[object | str]) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n")
    return path


def test_batch_lines_and_bare_bodies_mixed(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "r.jsonl",
        [
            {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT},
            "",
            {**CHAT, "metadata": {"row": 7}},
            {"model": "text-embedding-3-small", "input": "x"},
            {"model": "gpt-4o-mini", "input": "x", "metadata": {"custom_id": "resp-1"}},
        ],
    )
    got = list(read_requests(path))
    assert [(r.line_no, r.custom_id, r.url) for r in got] == [
        (1, "a", "/v1/chat/completions"),
        (3, "line-3", "/v1/chat/completions"),
        (4, "line-4", "/v1/embeddings"),
        (5, "resp-1", "/v1/responses"),
    ]
    assert got[1].metadata == {"row": 7} and "metadata" not in got[1].body  # ours, not sent to the API
    assert got[0].to_batch_line() == {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}


@pytest.mark.parametrize(
    ("body", "url"),
    [
        ({"model": "m", "messages": []}, "/v1/chat/completions"),
        ({"model": "text-embedding-3-large", "input": ["a"]}, "/v1/embeddings"),
        ({"model": "omni-moderation-latest", "input": "a"}, "/v1/moderations"),
        ({"input": "a"}, "/v1/moderations"),
        ({"model": "gpt-4.1", "input": "a"}, "/v1/responses"),
        ({"model": "gpt-3.5-turbo-instruct", "prompt": "a"}, "/v1/completions"),
    ],
)
def test_url_inference(body: dict[str, object], url: str) -> None:
    assert infer_url(body) == url


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ("{not json", None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        ('{"method": "POST", "url": "/v1/chat/completions", "body": {}}', "custom_id", "missing"),
        ('{"custom_id": 5, "method": "POST", "url": "/v1/chat/completions", "body": {}}', "custom_id", "string"),
        ('{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}', "method", "POST"),
        ('{"custom_id": "a", "method": "POST", "url": "/v1/images", "body": {}}', "url", "unsupported"),
        ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": []}', "body", "object"),
        (
            '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}',
            "body.model",
            "missing",
        ),
        ('{"model": "m", "messages": "hi"}', "messages", "array"),
        ('{"model": "m", "messages": [{"content": "hi"}]}', "messages[0].role", "missing"),
        ('{"model": "m", "messages": [{"role": "user"}], "max_tokens": "5"}', "max_tokens", "integer"),
        ('{"model": "m", "messages": [{"role": "user"}], "stream": true}', "stream", "streaming"),
        ('{"model": 3, "messages": [{"role": "user"}]}', "model", "string"),
        ('{"model": "m"}', None, "cannot tell the endpoint"),
        ('{"model": "m", "messages": [{"role": "user"}], "metadata": 3}', "metadata", "object"),
    ],
)
def test_each_invalid_line_names_line_and_field(line: str, field: str | None, words: str) -> None:
    got = parse_line(line.encode(), 42)
    assert isinstance(got, InvalidLine), got
    assert (got.line_no, got.field) == (42, field)
    assert words in got.message
    assert str(got).startswith("line 42")


def test_first_invalid_line_raises_with_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.jsonl", [CHAT, CHAT, "{oops", CHAT])
    with pytest.raises(RequestsFileError) as info:
        list(read_requests(path))
    assert "line 3" in str(info.value) and "invalid JSON" in str(info.value)
    assert info.value.errors[0].line_no == 3


def test_duplicate_custom_id_is_an_error_at_the_second_line(tmp_path: Path) -> None:
    line = {"custom_id": "same", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
    path = _write(tmp_path / "r.jsonl", [line, CHAT, line])
    invalid: list[InvalidLine] = []
    got = list(read_requests(path, invalid=invalid))
    assert [r.custom_id for r in got] == ["same", "line-2"]
    assert [(e.line_no, e.field, e.custom_id) for e in invalid] == [(3, "custom_id", "same")]
    assert "duplicate" in str(invalid[0])


def test_collect_mode_keeps_going_and_reads_streams() -> None:
    data = b"{bad\n" + orjson.dumps(CHAT) + b"\n" + b'{"model": "m"}\n'
    invalid: list[InvalidLine] = []
    got = list(read_requests(io.BytesIO(data), invalid=invalid))
    assert [r.line_no for r in got] == [2]
    assert [e.line_no for e in invalid] == [1, 3]
    err = RequestsFileError("r.jsonl", invalid[:1], total_invalid=2)
    assert "2 invalid lines" in str(err) and "and 1 more" in str(err)


def test_requestline_model_and_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(orjson.dumps(CHAT))
    (req,) = list(read_requests(path))
    assert isinstance(req, RequestLine) and req.model == "gpt-4o-mini" and req.custom_id == "line-1"


def test_a_line_that_is_not_utf8_is_explained_and_a_files_bom_is_accepted() -> None:
    latin = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    bad = parse_line(latin, 3)
    assert isinstance(bad, InvalidLine) and bad.line_no == 3
    assert "not UTF-8: byte 0xe9 at column" in bad.message
    plain = latin.replace(b"\xe9", b"e")
    assert isinstance(parse_line(b"\xef\xbb\xbf" + plain, 1), RequestLine)  # a file's BOM is accepted
    bom = parse_line(b"\xef\xbb\xbf" + plain, 2)  # ... but not in the middle of a file
    assert isinstance(bom, InvalidLine) and "byte order mark" in bom.message


def test_an_unknown_limiter_store_is_bad_input_and_nothing_is_touched(tmp_path: Path) -> None:
    from ratepilot.errors import InputError
    from ratepilot.run import RunOptions, run_job

    req = tmp_path / "r.jsonl"
    req.write_bytes(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}\n')
    out = tmp_path / "out.jsonl"
    options = RunOptions(req, out, base_url="http://127.0.0.1:9/v1", api_key="sk-test-x", store="bogus://")
    with pytest.raises(InputError, match="unknown limiter store"):
        run_job(options)
    assert not out.exists()


def test_json_nested_deeper_than_any_request_is_refused_with_its_line() -> None:
    deep = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ' + b"[" * 300 + b"]" * 300 + b"}]}"
    bad = parse_line(deep, 7)
    assert isinstance(bad, InvalidLine) and bad.line_no == 7 and "nested more than 200 levels" in bad.message
    fine = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"[" * 300 + b'"}]}'
    assert isinstance(parse_line(fine, 1), RequestLine)  # brackets inside a string are text, not nesting


def test_a_request_larger_than_the_endpoint_takes_is_refused_locally(tmp_path: Path) -> None:
    many = {"model": "text-embedding-3-small", "input": ["x"] * 2049}
    bad = parse_line(orjson.dumps(many), 3)
    assert isinstance(bad, InvalidLine) and (bad.line_no, bad.field) == (3, "input")
    assert "2,049 items" in bad.message and "at most 2,048" in bad.message
    assert isinstance(parse_line(orjson.dumps({**many, "input": ["x"] * 2048}), 3), RequestLine)
    huge = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (33 << 20)}]})
    bad = parse_line(huge, 9)
    assert isinstance(bad, InvalidLine) and bad.line_no == 9 and "request limit; not sent" in bad.message
    # The batch planner's fast path refuses it the same way (nothing uploaded).
    block = parse_upload_block(orjson.dumps(CHAT) + b"\n" + huge + b"\n")
    assert [e.line_no for e in block.errors] == [2] and "request limit" in block.errors[0].message


@pytest.mark.parametrize("target", ["/dev/null", "/dev/full"])  # (/dev/stdout is a file under pytest)
def test_results_must_go_to_a_regular_file(tmp_path: Path, target: str) -> None:
    from ratepilot.errors import InputError
    from ratepilot.run import RunOptions, run_job

    req = tmp_path / "r.jsonl"
    req.write_bytes(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}\n')
    options = RunOptions(req, Path(target), base_url="http://127.0.0.1:9/v1", api_key="sk-test-x")
    with pytest.raises(InputError, match="not a regular file"):
        run_job(options)


@pytest.mark.parametrize("broken", ["corrupt", "unwritable"])
def test_an_unusable_cache_or_state_file_is_one_line_and_exit_2(tmp_path: Path, broken: str) -> None:
    from ratepilot.errors import InputError
    from ratepilot.run import RunOptions, run_job

    req = tmp_path / "r.jsonl"
    req.write_bytes(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}\n')
    if broken == "corrupt":
        cache = tmp_path / "cache.sqlite3"
        cache.write_bytes(b"this is not a database" * 100)
    else:  # a home the state cannot be created in (a file where the directory should be; root ignores modes)
        (tmp_path / "home").write_bytes(b"")
        cache = tmp_path / "home" / "cache.sqlite3"
    options = RunOptions(
        req, tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1", api_key="sk-test-x", cache_path=cache
    )
    with pytest.raises(InputError, match=r"cannot be used as a ratepilot database.*RATEPILOT_HOME"):
        run_job(options)


def test_a_files_bom_never_reaches_a_batch_upload_line() -> None:

    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", '
    line += b'"messages": [{"role": "user", "content": "hi"}]}}\n'
    block = parse_upload_block(b"\xef\xbb\xbf" + line + line.replace(b'"a"', b'"b"'))
    assert block.n_errors == 0
    (group,) = block.groups
    assert group.custom_ids == ["a", "b"] and not group.data.startswith(b"\xef\xbb\xbf")
