"""The `ratepilot batch` commands end to end against a real-clock simulator (time scale 500: seconds of API
time pass in milliseconds), run in-process with typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratepilot.cli import app
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import API_KEY, chat_line, read_results, write_jsonl


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
        configure(s.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0, seed=4))
        yield s


def _invoke(sim: Simulator, state: Path, *args: str) -> tuple[int, str]:
    env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": sim.base_url, "RATEPILOT_HOME": str(state)}
    result = CliRunner().invoke(app, ["batch", *args], env=env)
    return result.exit_code, result.output


def test_submit_wait_collect_status_list(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    requests = write_jsonl(
        tmp_path / "r.jsonl", [chat_line(i, "gpt-4.1-nano" if i % 2 else "gpt-4o-mini") for i in range(9)]
    )
    code, out = _invoke(
        sim, state, "submit", str(requests), "--name", "cli", "--max-requests", "2", "--poll-interval", "0.01"
    )
    assert code == 0, out
    assert "batch job cli" in out and "requests 9" in out

    code, out = _invoke(sim, state, "wait", "cli", "--poll-interval", "0.01", "--timeout", "60", "--json")
    assert code == 0, out
    status = json.loads(out.strip().splitlines()[-1])
    assert status["complete"] and status["done"] == 9 and len(status["shards"]) == 5  # 3 mini + 2 nano

    code, out = _invoke(sim, state, "collect", "cli", "-o", str(tmp_path / "out.jsonl"))
    assert code == 0 and "wrote 9 results" in out
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [f"req-{i:05d}" for i in range(9)]

    code, out = _invoke(sim, state, "status")
    assert code == 0 and "batch job cli — done" in out and "cost so far" in out

    code, out = _invoke(sim, state, "list", "--limit", "4", "--json")
    page = json.loads(out)
    assert code == 0 and len(page["data"]) == 4 and page["next_after"] == page["data"][-1]["id"]
    assert {row["job"] for row in page["data"]} == {"cli"}
    code, out = _invoke(sim, state, "list", "--limit", "4", "--after", page["next_after"], "--json")
    assert code == 0 and len(json.loads(out)["data"]) == 1
    code, out = _invoke(sim, state, "list", "--all", "--limit", "4", "--json")
    assert len(json.loads(out)["data"]) == 5

    code, out = _invoke(sim, state, "list", "--jobs")
    assert code == 0 and "cli\tdone\t9" in out


def test_unknown_job_and_foreign_results_file(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, out = _invoke(sim, state, "status", "nope")
    assert code == ExitCode.BAD_INPUT and "no batch job named 'nope'" in out
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])
    foreign = tmp_path / "taken.jsonl"
    foreign.write_text('{"something": "else"}\n')
    code, out = _invoke(
        sim, state, "submit", str(requests), "--name", "x", "--wait", "-o", str(foreign), "--poll-interval", "0.01"
    )
    assert code == ExitCode.CONFLICT and "not written by ratepilot" in out
    assert foreign.read_text() == '{"something": "else"}\n'  # nothing lost


def test_same_name_for_other_input_is_refused(sim: Simulator, tmp_path: Path) -> None:
    state = tmp_path / "state"
    a = write_jsonl(tmp_path / "a.jsonl", [chat_line(0)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat_line(1), chat_line(2)])
    assert _invoke(sim, state, "submit", str(a), "--name", "dup", "--poll-interval", "0.01")[0] == 0
    code, out = _invoke(sim, state, "submit", str(b), "--name", "dup", "--poll-interval", "0.01")
    assert code == ExitCode.CONFLICT and "planned from different input" in out
    code, out = _invoke(sim, state, "forget", "dup")
    assert code == 0
    assert _invoke(sim, state, "submit", str(b), "--name", "dup", "--poll-interval", "0.01")[0] == 0


def test_wait_timeout_exits_incomplete(sim: Simulator, tmp_path: Path) -> None:
    configure(sim.state, LongrunConfig(time_scale=1.0))  # seconds per batch: a 0 s wait cannot see it finish
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
    assert _invoke(sim, state, "submit", str(requests), "--name", "t", "--poll-interval", "0.01")[0] == 0
    code, out = _invoke(sim, state, "wait", "t", "--timeout", "0", "--poll-interval", "0.01")
    assert code == ExitCode.INCOMPLETE, out
    code, out = _invoke(sim, state, "collect", "t", "-o", str(tmp_path / "o.jsonl"))
    # 6 while unanswered requests remain; the file holds what is answered
    assert code in (ExitCode.OK, ExitCode.INCOMPLETE)
