"""The result-line format, the durable writer, the reader, and the job marker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ratepilot.results import (
    ForeignResultsError,
    ResultWriter,
    error_result,
    finished_ids,
    job_id_for_file,
    marker_path,
    open_results,
    read_marker,
    read_results,
    response_result,
)


def test_lines_are_batch_api_shaped() -> None:
    ok = response_result("a", 200, "req_1", {"x": 1})
    assert list(ok) == ["id", "custom_id", "response", "error"]
    assert ok["response"] == {"status_code": 200, "request_id": "req_1", "body": {"x": 1}} and ok["error"] is None
    bad = error_result("b", "batch_expired", "expired")
    assert bad["response"] is None and bad["error"] == {"code": "batch_expired", "message": "expired"}
    assert ok["id"] != bad["id"] and ok["id"].startswith("rpreq_")


def test_append_is_not_durable_until_sync(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with open_results(path, "job-1") as writer:
        writer.append(response_result("a", 200, "r", {}))
        writer.append(response_result("b", 200, "r", {}))
        assert path.read_bytes() == b"" and writer.pending == 2
        assert writer.sync() == 2
        assert writer.sync() == 0
        assert finished_ids(path) == {"a", "b"}
        writer.append(error_result("c", "x", "y"))
    # close() syncs what is left
    assert [line["custom_id"] for line in read_results(path)] == ["a", "b", "c"]


def test_marker_written_first_and_same_job_resumes(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    req = tmp_path / "req.jsonl"
    req.write_text("{}\n")
    job = job_id_for_file(req)
    assert job.startswith("sha256:")
    with open_results(path, job, requests=req) as w:
        w.append(response_result("a", 200, "r", {}))
    marker = read_marker(path)
    assert marker is not None and marker.job_id == job and marker.requests == str(req.resolve())
    assert marker_path(path).name == "out.jsonl.ratepilot"
    with open_results(path, job) as w:  # same job: append
        w.append(response_result("b", 200, "r", {}))
    assert finished_ids(path) == {"a", "b"}


def test_results_of_another_job_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with open_results(path, "job-1") as w:
        w.append(response_result("a", 200, "r", {}))
    with pytest.raises(ForeignResultsError, match="another job"):
        open_results(path, "job-2")
    assert finished_ids(path) == {"a"}  # untouched
    with open_results(path, "job-2", overwrite=True) as w:
        pass
    assert path.read_bytes() == b"" and read_marker(path).job_id == "job-2"  # type: ignore[union-attr]


def test_a_file_not_written_by_ratepilot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"custom_id": "x"}\n')
    with pytest.raises(ForeignResultsError, match="not written by ratepilot"):
        open_results(path, "job-1")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    open_results(empty, "job-1").close()  # an empty file is fine


def test_torn_last_line_is_cut_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with open_results(path, "job") as w:
        w.append(response_result("a", 200, "r", {}))
    with open(path, "ab") as fh:  # a kill -9 in the middle of a write
        fh.write(orjson.dumps(response_result("b", 200, "r", {}))[:30])
    assert finished_ids(path) == {"a"}  # the reader ignores it
    with open_results(path, "job") as w:
        w.append(response_result("b", 200, "r", {}))
    assert [line["custom_id"] for line in read_results(path)] == ["a", "b"]


def test_writer_without_marker_and_missing_file_reads_empty(tmp_path: Path) -> None:
    assert list(read_results(tmp_path / "nope.jsonl")) == []
    with ResultWriter(tmp_path / "plain.jsonl", fsync=False) as w:
        w.append(response_result("a", 200, "r", {}))
    assert finished_ids(tmp_path / "plain.jsonl") == {"a"}
