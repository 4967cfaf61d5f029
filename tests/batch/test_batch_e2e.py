"""End to end against the simulator (fake clock): multi-model, multi-shard, injected line failures, expiry,
token_limit_exceeded — and every request answered exactly once, in input order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from openai import OpenAI

from ratepilot.batch import BatchConfig, BatchRunner
from ratepilot.protocol.tokens import estimate_prompt_tokens
from ratepilot.sim import Simulator
from ratepilot.sim.longrun import LongrunConfig

from .conftest import API_KEY, chat_line, read_results, write_jsonl

MINI, NANO = "gpt-4o-mini", "gpt-4.1-nano"


def _tokens(lines: list[dict[str, object]]) -> int:
    return sum(estimate_prompt_tokens(str(ln["url"]), ln["body"]) for ln in lines)  # type: ignore[arg-type]


def test_multi_model_job_with_failures_expiry_and_token_limit(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    lines = [chat_line(i, NANO if i % 4 == 0 else MINI) for i in range(55)]  # 14 nano, 41 mini
    nano = [ln for ln in lines if ln["body"]["model"] == NANO]  # type: ignore[index]
    # Room for one 10-line nano shard plus two lines: the 4-line shard must wait for the 10-line one.
    nano_limit = _tokens(nano[:10]) + _tokens(nano[10:12])
    longrun = LongrunConfig(
        batch_lines_per_second=1.0,
        batch_completion_window_seconds=11.0,  # a 10-line shard runs 2 s validating + 10 s: it expires
        batch_line_failure_rate=0.15,
        enqueued_token_limits={NANO: nano_limit},
        enqueued_token_limit=None,
        seed=7,
    )
    config = BatchConfig(max_requests=10, max_attempts=5, poll_interval=1.0, token_estimate="exact")
    runner = make_runner(config=config, longrun=longrun)
    requests = write_jsonl(tmp_path / "requests.jsonl", lines)

    status = runner.submit(requests, name="e2e")
    assert {s.model for s in status.shards} == {MINI, NANO}
    assert len([s for s in status.shards if s.model == MINI]) == 5
    assert len([s for s in status.shards if s.model == NANO]) == 2

    status = runner.wait("e2e")
    assert status.complete and status.done == 55 and status.failed == 0

    summary = runner.collect("e2e", tmp_path / "results.jsonl")
    assert (summary.written, summary.done, summary.missing) == (55, 55, 0)
    results = read_results(tmp_path / "results.jsonl")
    assert [r["custom_id"] for r in results] == [ln["custom_id"] for ln in lines]  # input order, each once
    assert all(r["response"]["status_code"] == 200 for r in results)

    # It really went through the hard paths.
    shards = status.shards
    assert any(s.batch_status == "expired" for s in shards)
    assert any(s.round >= 1 for s in shards)  # a retry round (5xx lines and expired lines)
    job = runner.store.get_job("e2e")
    assert job is not None
    events = [kind for _shard, kind, _detail in runner.store.events(job)]
    assert "token-limit-deferred" in events
    assert runner.store.token_limit(NANO, runner.key_id) == nano_limit  # learned from the failure message
    assert status.cost_usd > 0

    # Never a duplicate batch: each (shard, submission) has exactly one batch on the server.
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as client:
        metas = [
            (b.metadata["ratepilot_shard"], b.metadata["ratepilot_submit"])
            for b in client.batches.list(limit=100)
            if b.metadata and b.metadata.get("ratepilot_job") == "e2e"
        ]
    assert metas and max(Counter(metas).values()) == 1


def test_rerun_of_a_finished_job_is_a_no_op(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(max_requests=3, poll_interval=1.0))
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(7)])
    summary = runner.run(requests, tmp_path / "out.jsonl", name="again")
    assert summary.complete and summary.written == 7
    before = fake_sim.stats()["requests"]["by_endpoint"].get("/v1/batches", 0)
    summary = runner.run(requests, tmp_path / "out.jsonl", name="again")
    assert summary.complete and summary.written == 7
    assert fake_sim.stats()["requests"]["by_endpoint"].get("/v1/batches", 0) == before  # nothing created


def test_iterable_input_and_bare_bodies(tmp_path: Path, make_runner: Callable[..., BatchRunner]) -> None:
    runner = make_runner()
    bodies = [{"model": MINI, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)]
    summary = runner.run(iter(bodies), tmp_path / "out.jsonl", name="bare")
    assert [r["custom_id"] for r in read_results(tmp_path / "out.jsonl")] == [f"line-{i}" for i in range(1, 5)]
    assert summary.complete
