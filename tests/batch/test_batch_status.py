"""`batch status`: the last known state, said to be so (only --refresh retrieves the batches); the ETA is relative
to the runner's clock, from the last poll, and unknown rather than guessed when it cannot be known."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ratepilot.batch import BatchRunner
from ratepilot.batch.state import ShardState
from ratepilot.batch.status import eta as _eta
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import chat_line, invoke_batch_cli, shard_record, write_jsonl


def test_eta_is_relative_to_now_and_unknown_when_it_cannot_be_known() -> None:
    # 25 of 100 lines in the 50 s between in_progress_at and the last poll: 150 s left at that poll.
    running = shard_record(in_progress_at=1000.0, updated_at=1050.0, completed=20, failed=5)
    assert _eta((running,), now=1050.0) == pytest.approx(150.0)
    assert _eta((running,), now=1090.0) == pytest.approx(110.0)  # 40 s later: 40 s less
    assert _eta((running,), now=5000.0) == 0.0  # overdue: not negative
    collected = shard_record(shard=1, state=ShardState.COLLECTED.value)
    assert _eta((running, collected), now=1050.0) == pytest.approx(150.0)
    assert _eta((running, shard_record(shard=1, state=ShardState.UPLOADED.value)), now=1050.0) is None  # deferred
    assert _eta((shard_record(in_progress_at=None, updated_at=1050.0),), now=1050.0) is None  # still validating
    assert _eta((shard_record(in_progress_at=1000.0, updated_at=1050.0),), now=1050.0) is None  # no progress yet
    assert _eta((collected,), now=1050.0) is None  # nothing running


def test_status_eta_and_refresh_use_the_fake_clock(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(longrun=LongrunConfig(batch_lines_per_second=1.0, batch_validation_seconds=2.0))
    name = runner.submit(write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(100)]), name="e").name
    assert runner.status(name).eta_seconds is None  # validating: unknown, not a guess
    fake_sim.clock.advance(22.0)  # in progress since t=2: 20 of 100 lines done
    assert runner.status(name).eta_seconds is None  # nothing polled since: the last known state has no rate
    status = runner.refresh(name)
    assert status.shards[0].completed == 20 and status.polled_at == pytest.approx(fake_sim.clock.wall())
    assert status.eta_seconds == pytest.approx(80.0, abs=1.5)
    fake_sim.clock.advance(30.0)
    assert runner.status(name).eta_seconds == pytest.approx(50.0, abs=1.5)  # from the last poll, relative to now


def test_status_cli_says_what_it_shows_and_refresh_retrieves(tmp_path: Path) -> None:
    with Simulator(SimConfig(latency_ms=0)) as sim:
        configure(sim.state, LongrunConfig(time_scale=1.0, batch_lines_per_second=0.5))
        state = tmp_path / "state"
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
        code, out = invoke_batch_cli(sim, state, "submit", str(requests), "--name", "s")
        assert code == 0, out
        calls = sim.stats()["requests"]["by_endpoint"].get("/v1/batches/{id}", 0)
        code, out = invoke_batch_cli(sim, state, "status", "s", env={"OPENAI_API_KEY": ""})
        assert code == 0 and "last known state, batches last polled" in out and "--refresh" in out
        assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches/{id}", 0) == calls  # local only
        code, out = invoke_batch_cli(sim, state, "status", "s", "--refresh")
        assert code == 0 and "retrieved just now" in out, out
        assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches/{id}", 0) == calls + 1
