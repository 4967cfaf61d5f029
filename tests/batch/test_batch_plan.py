"""Planning: split by model and endpoint, shard by requests / bytes / embedding inputs / token cap, streaming."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from ratepilot.batch import BatchConfig, ShardWriter
from ratepilot.batch.blocks import parse_upload_block
from ratepilot.batch.plan import batch_line_bytes, embedding_inputs, fast_token_estimate

from .conftest import chat_line


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


def test_split_by_model_then_by_request_count(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, BatchConfig(max_requests=3))
    for i in range(10):
        line = chat_line(i, "gpt-4o-mini" if i % 2 else "gpt-4.1-nano")
        writer.add(line["custom_id"], line["url"], line["body"])
    specs = writer.close()
    by_model: dict[str, list[int]] = {}
    for spec in specs:
        by_model.setdefault(spec.model, []).append(spec.n_requests)
        assert {ln["body"]["model"] for ln in _lines(spec.path)} == {spec.model}  # type: ignore[index]
    assert sorted(by_model["gpt-4o-mini"]) == [2, 3]
    assert sorted(by_model["gpt-4.1-nano"]) == [2, 3]
    assert sum(s.n_requests for s in specs) == 10
    assert [s.shard for s in specs] == sorted(s.shard for s in specs)


def test_byte_limit_and_exact_file_sizes(tmp_path: Path) -> None:
    one = len(batch_line_bytes("req-00000", "/v1/chat/completions", chat_line(0)["body"]))
    writer = ShardWriter(tmp_path, BatchConfig(max_bytes=one * 2 + 1))
    for i in range(5):
        line = chat_line(i)
        writer.add(line["custom_id"], line["url"], line["body"])
    specs = writer.close()
    assert [s.n_requests for s in specs] == [2, 2, 1]
    for spec in specs:
        assert spec.path.stat().st_size == spec.n_bytes <= one * 2 + 1


def test_embedding_inputs_are_capped_per_file(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, BatchConfig(max_embedding_inputs=5))
    for i in range(4):
        body = {"model": "text-embedding-3-small", "input": ["a", "b", "c"]}
        writer.add(f"e{i}", "/v1/embeddings", body)
    specs = writer.close()
    assert [s.n_inputs for s in specs] == [3, 3, 3, 3]  # 3 + 3 > 5: one request per file
    assert embedding_inputs("/v1/embeddings", {"input": "one"}) == 1
    assert embedding_inputs("/v1/embeddings", {"input": [1, 2, 3]}) == 1  # one input given as token ids
    assert embedding_inputs("/v1/chat/completions", {"input": ["a"]}) == 0


def test_known_token_limit_caps_each_shard(tmp_path: Path) -> None:
    line = chat_line(0)
    per_line = fast_token_estimate(batch_line_bytes(line["custom_id"], line["url"], line["body"]))
    writer = ShardWriter(tmp_path, BatchConfig(), token_cap=lambda model: per_line * 3 + 2)
    for i in range(7):
        ln = chat_line(i)
        writer.add(ln["custom_id"], ln["url"], ln["body"])
    specs = writer.close()
    assert [s.n_requests for s in specs] == [3, 3, 1]
    assert all(s.est_tokens <= per_line * 3 + 2 for s in specs)


def test_abort_removes_every_file(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, BatchConfig(max_requests=1))
    for i in range(3):
        ln = chat_line(i)
        writer.add(ln["custom_id"], ln["url"], ln["body"])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def _block_lines(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        model = rng.choice(["gpt-4o-mini", "gpt-4.1-nano", "o3-mini"])
        text = "x" * rng.randint(1, 300)
        lines.append(
            orjson.dumps(
                {**chat_line(i, model), "body": {"model": model, "messages": [{"role": "user", "content": text}]}}
            )
            + b"\n"
        )
    return lines


@pytest.mark.parametrize(
    "config",
    [
        BatchConfig(),
        BatchConfig(max_requests=7),
        BatchConfig(max_bytes=1500),
        BatchConfig(max_bytes=60),  # every line alone, oversize lines included
        BatchConfig(max_requests=11, max_bytes=4000),
    ],
)
@pytest.mark.parametrize("cap", [None, 500])
def test_block_planning_matches_line_by_line(tmp_path: Path, config: BatchConfig, cap: int | None) -> None:
    # add_groups (prefix sums + bisection per block) must cut exactly where add_prepared (one line at a time)
    # does: same shard numbers, same totals, same bytes, every line in the same shard.
    lines = _block_lines(7, 300)
    token_cap = (lambda model: cap if model != "o3-mini" else None) if cap else (lambda model: None)
    by_line = ShardWriter(tmp_path / "a", config, token_cap=token_cap)
    expected = {}
    for line_no, raw in enumerate(lines, 1):
        body = orjson.loads(raw)["body"]
        expected[line_no] = by_line.add_prepared(
            body["model"], "/v1/chat/completions", raw, 0, fast_token_estimate(raw)
        )
    by_block = ShardWriter(tmp_path / "b", config, token_cap=token_cap)
    got = {}
    first = 1
    for start in range(0, len(lines), 37):  # blocks of 37 lines
        block = parse_upload_block(b"".join(lines[start : start + 37]), first)
        first += block.n_lines
        for group, segments in zip(block.groups, by_block.add_groups(block.groups), strict=True):
            for lo, hi, shard in segments:
                got.update(dict.fromkeys(group.line_nos[lo:hi], shard))
    assert got == expected
    a, b = by_line.close(), by_block.close()
    assert [(s.shard, s.model, s.n_requests, s.n_bytes, s.est_tokens) for s in a] == [
        (s.shard, s.model, s.n_requests, s.n_bytes, s.est_tokens) for s in b
    ]
    assert [s.path.read_bytes() for s in a] == [s.path.read_bytes() for s in b]


def test_block_planning_caps_embedding_inputs(tmp_path: Path) -> None:
    config = BatchConfig(max_embedding_inputs=10)
    inputs = [1, 4, 6, 9, 2, 2, 2, 11, 3]
    lines = [
        orjson.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": ["a"] * k},
            }
        )
        + b"\n"
        for i, k in enumerate(inputs)
    ]
    writer = ShardWriter(tmp_path, config)
    block = parse_upload_block(b"".join(lines))
    writer.add_groups(block.groups)
    assert [s.n_inputs for s in writer.close()] == [5, 6, 9, 6, 11, 3]
