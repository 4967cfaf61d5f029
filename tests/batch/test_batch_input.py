"""Bad input files get clear errors naming line and field, exit code 2, and nothing is uploaded; the report of
duplicate custom_ids is the first duplicates in line order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI
from typer.testing import CliRunner

import ratepilot.batch.prepare as prepare_mod
from ratepilot.batch import BatchConfig, BatchInputError, BatchRunner
from ratepilot.batch.state import BatchState, JobRecord
from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import SimConfig, Simulator

from .conftest import API_KEY, chat_line, invoke_batch_cli, write_jsonl


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
        yield s


def _submit(sim: Simulator, path: Path, state: Path) -> tuple[int, str]:
    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": sim.base_url, "RATEPILOT_HOME": str(state)}
    result = CliRunner().invoke(app, ["batch", "submit", str(path), "--poll-interval", "0"], env=env)
    return result.exit_code, result.output


def _good(i: int) -> bytes:
    return orjson.dumps(chat_line(i)) + b"\n"


CASES = {
    "invalid_json": (
        [_good(0), _good(1), b'{"custom_id": "x", "method": "POST",\n', _good(3)],
        ["line 3", "invalid JSON"],
    ),
    "duplicate_ids": (
        [_good(0), _good(1), _good(2), _good(1)],
        ["line 4", "field 'custom_id'", "duplicate custom_id 'req-00001'"],
    ),
    "mixed_urls": (
        [
            _good(0),
            _good(1),
            orjson.dumps(
                {
                    "custom_id": "e",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": "x"},
                }
            )
            + b"\n",
        ],
        ["line 3", "field 'url'", "line 1", "one job has one endpoint"],
    ),
    "empty_file": ([], ["empty file", "nothing uploaded"]),
    "blank_lines_only": ([b"\n", b"   \n"], ["empty file"]),
    "missing_model": (
        [
            _good(0),
            orjson.dumps(
                {
                    "custom_id": "m",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "hi"}]},
                }
            )
            + b"\n",
        ],
        ["line 2", "field 'body.model'"],
    ),
    "get_method": (
        [orjson.dumps({**chat_line(0), "method": "GET"}) + b"\n"],
        ["line 1", "field 'method'"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_refused_with_line_numbers_and_nothing_is_uploaded(
    case: str, sim: Simulator, tmp_path: Path
) -> None:
    lines, expected = CASES[case]
    path = write_jsonl(tmp_path / f"{case}.jsonl", list(lines))
    before = sim.stats()["requests"]["total"]
    code, output = _submit(sim, path, tmp_path / "state")
    assert code == 2, output
    for fragment in expected:
        assert fragment in output, (fragment, output)
    assert sim.stats()["requests"]["total"] == before  # not a single API call: nothing uploaded
    assert not any((tmp_path / "state" / "batches").glob("*/shard-*.jsonl"))  # no shard files left behind


def test_many_errors_are_listed_then_counted(sim: Simulator, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [b"nope\n"] * 30)
    code, output = _submit(sim, path, tmp_path / "state")
    assert code == 2
    assert "30 invalid lines" in output and "line 1:" in output and "line 20:" in output and "10 more" in output


def test_missing_file_and_bad_name(sim: Simulator, tmp_path: Path) -> None:
    code, output = _submit(sim, tmp_path / "absent.jsonl", tmp_path / "state")
    assert code == 2 and "no such file" in output
    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": sim.base_url, "RATEPILOT_HOME": str(tmp_path / "s")}
    path = write_jsonl(tmp_path / "ok.jsonl", [chat_line(0)])
    result = CliRunner().invoke(app, ["batch", "submit", str(path), "--name", "../evil"], env=env)
    assert result.exit_code == 2 and "job names" in result.output


def test_fixed_file_can_be_submitted_after_a_refusal(sim: Simulator, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [_good(0), b"{bad\n"])
    assert _submit(sim, path, tmp_path / "state")[0] == 2
    write_jsonl(path, [_good(0), _good(1)])
    code, output = _submit(sim, path, tmp_path / "state")
    assert code == 0, output
    assert "requests 2" in output


def test_bad_json_and_duplicate_ids_are_reported_together(sim: Simulator, tmp_path: Path) -> None:
    # A duplicate is found even when the file has other bad lines: one report, in line order, counted right.
    lines = [_good(0), _good(1), b"{broken\n", _good(3), _good(1), _good(5), b"[1, 2]\n", _good(3)]
    path = write_jsonl(tmp_path / "both.jsonl", lines)
    before = sim.stats()["requests"]["total"]
    code, output = _submit(sim, path, tmp_path / "state")
    assert code == 2, output
    assert "4 invalid lines" in output
    reported = [line.strip() for line in output.splitlines() if line.strip().startswith("line ")]
    assert [r.split(":")[0] for r in reported] == [
        "line 3",
        "line 5, field 'custom_id'",
        "line 7",
        "line 8, field 'custom_id'",
    ]
    assert "duplicate custom_id 'req-00001' (first on line 2)" in reported[1]
    assert "duplicate custom_id 'req-00003' (first on line 4)" in reported[3]
    assert sim.stats()["requests"]["total"] == before  # nothing uploaded
    assert not any((tmp_path / "state" / "batches").glob("*/shard-*.jsonl"))


def test_error_report_is_the_files_first_errors_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # More errors than are listed: the first 20 by line number (duplicates and others interleaved), in line
    # order, and the count of all of them — the same with parallel parsing of small blocks.
    monkeypatch.setattr(prepare_mod, "CHUNK_BYTES", 700)  # several blocks
    lines: list[bytes] = []
    for i in range(60):
        lines.append(_good(i))
        lines.append(b"{bad\n" if i % 2 else _good(i // 2))  # odd i: bad JSON; even i: an earlier id again
    path = write_jsonl(tmp_path / "many.jsonl", lines)
    reports = []
    for workers in (1, 2):
        with (
            OpenAI(base_url="http://127.0.0.1:9/v1", api_key=API_KEY) as client,
            BatchRunner(
                client, state_dir=tmp_path / f"s{workers}", config=BatchConfig(parse_workers=workers)
            ) as runner,
            pytest.raises(BatchInputError) as err,
        ):
            runner.prepare(path, name="many")
        reports.append(str(err.value))
        assert err.value.total_invalid == 60
        assert [e.line_no for e in err.value.errors] == list(range(2, 42, 2))  # every second line, in order
        assert "40 more" in str(err.value)
    assert reports[0] == reports[1]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small"}},
         "body.input"),
        ({"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
          "body": {"model": "text-embedding-3-small", "input": 3}}, "body.input"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": "gpt-3.5-turbo-instruct"}},
         "body.prompt"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions",
          "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": -1}}, "body.max_tokens"),
    ],
)  # fmt: skip
def test_body_errors_of_embeddings_and_completions(
    line: dict[str, Any], field: str, tmp_path: Path, fake_sim: Simulator
) -> None:
    good = {**line, "custom_id": "ok"}
    good["body"] = {"model": line["body"]["model"], ("prompt" if "completions" in line["url"] else "input"): "x"}
    requests = write_jsonl(tmp_path / "r.jsonl", [good, line])
    code, out = invoke_batch_cli(fake_sim, tmp_path / "state", "submit", str(requests))
    assert code == ExitCode.BAD_INPUT and "line 2" in out and field in out, out
    assert fake_sim.stats()["requests"]["by_endpoint"].get("/v1/files", 0) == 0  # nothing uploaded


def _duplicates_by_grouping(ids: list[str]) -> tuple[list[tuple[str, int, int]], int]:
    """The report as the previous query made it (every duplicate in memory), to compare with."""
    lines: dict[str, list[int]] = {}
    for idx, cid in enumerate(ids, 1):
        lines.setdefault(cid, []).append(idx)
    found = sorted(((cid, idxs[0], idx) for cid, idxs in lines.items() for idx in idxs[1:]), key=lambda d: d[2])
    return found[:20], sum(len(idxs) - 1 for idxs in lines.values())


def test_duplicate_report_is_the_first_duplicates_in_line_order(tmp_path: Path) -> None:
    rng = random.Random(7)
    ids = [f"id-{rng.randrange(300)}" for _ in range(1000)]  # many duplicates, some ids three times or more
    with BatchState(tmp_path / "db.sqlite3") as store:
        job = store.create_job(JobRecord(name="dups", input_path="x", fingerprint="f", nonce="n"))
        with store.bulk():
            store.add_lines(job, [(idx, cid, 0) for idx, cid in enumerate(ids, 1)])
            found = store.index_lines(job, report=20)
    assert found == _duplicates_by_grouping(ids)
    assert found[1] == 1000 - len(set(ids))
