"""The online fallback: the stragglers of a batch job (lines out of attempts) are answered through the online
engine, concurrently, and land in input order; every answer is recorded, errors included, and a quota error stops
it at once, keeping what it answered. It posts through the runner's one raw-SDK path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from ratepilot.batch import BatchConfig, BatchRunner, sdk_fallback
from ratepilot.engine.sender import api_path
from ratepilot.engine.window import InFlightWindow
from ratepilot.errors import QuotaExhausted
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

from .conftest import API_KEY, chat_line, connection_error, endpoint_calls, invoke_batch_cli, read_results, write_jsonl


def test_online_fallback_answers_the_stragglers(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as online:
        runner = make_runner(
            config=BatchConfig(max_attempts=1, poll_interval=1.0),
            longrun=LongrunConfig(batch_line_failure_rate=0.4, seed=11),
            fallback=sdk_fallback(online),
        )
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(20)])
        status = runner.wait(runner.submit(requests, name="fb").name)
    assert status.complete and status.done == 20 and status.failed == 0
    online_calls = endpoint_calls(fake_sim, "/v1/chat/completions")
    assert 0 < online_calls < 20  # only the stragglers went online
    runner.collect("fb", tmp_path / "out.jsonl")
    results = read_results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(20)]
    assert all(r["response"]["status_code"] == 200 for r in results)


def test_fallback_answers_stragglers_concurrently_in_input_order(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as online:
        post = sdk_fallback(online)
        lock = threading.Lock()
        in_flight = [0, 0, 0]  # now, max, started
        two_at_once = threading.Barrier(2, timeout=10)  # one-at-a-time, the first call would time out here

        def fallback(url: str, body: Any) -> tuple[int, str | None, Any]:
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
                in_flight[2] += 1
                first_two = in_flight[2] <= 2
            try:
                if first_two:
                    two_at_once.wait()
                return post(url, body)
            finally:
                with lock:
                    in_flight[0] -= 1

        runner = make_runner(
            config=BatchConfig(max_attempts=1, poll_interval=1.0),
            longrun=LongrunConfig(batch_line_failure_rate=0.5, seed=3),
            fallback=fallback,
        )
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(100)])
        status = runner.wait(runner.submit(requests, name="fbc").name)
    assert status.complete and status.done == 100
    assert in_flight[1] >= 2 and not two_at_once.broken
    runner.collect("fbc", tmp_path / "out.jsonl")
    results = read_results(tmp_path / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(100)]
    assert all(r["response"]["status_code"] == 200 for r in results)


@pytest.fixture
def scaled_sim() -> Iterator[Simulator]:
    """Real clock; the batches run at time scale 500 (seconds of API time in milliseconds)."""
    with Simulator(SimConfig(latency_ms=0)) as s:
        yield s


def test_cli_wait_fallback_online_finishes_fifty_stragglers(tmp_path: Path, scaled_sim: Simulator) -> None:
    # The flag end to end; that the fallback sends concurrently is shown above (a barrier two posts must meet).
    sim = scaled_sim
    configure(sim.state, LongrunConfig(time_scale=500.0, batch_lines_per_second=100.0, batch_line_failure_rate=1.0))
    state = tmp_path / "state"
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(50)])
    code, out = invoke_batch_cli(sim, state, "submit", str(requests), "--name", "fo", "--max-attempts", "1")
    assert code == 0, out
    out_file = tmp_path / "out.jsonl"
    code, out = invoke_batch_cli(
        sim, state, "wait", "fo", "--fallback", "online", "--max-attempts", "1", "--poll-interval", "0.01",
        "--timeout", "60", "-o", str(out_file), "--json",
    )  # fmt: skip
    assert code == 0, out
    assert sim.stats()["requests"]["by_endpoint"]["/v1/chat/completions"] == 50  # every line failed in batch
    results = read_results(out_file)
    assert [r["custom_id"] for r in results] == [f"req-{i:05d}" for i in range(50)]
    assert all(r["response"]["status_code"] == 200 for r in results)


def test_fallback_stops_on_quota_keeping_what_it_answered(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as online:
        post = sdk_fallback(online)
        calls: list[str] = []

        def fallback(url: str, body: Any) -> tuple[int, str | None, Any]:
            calls.append(url)
            if len(calls) == 3:
                raise connection_error(QuotaExhausted("insufficient_quota"))  # as the SDK wraps the Pilot's
            return post(url, body)

        runner = make_runner(
            config=BatchConfig(max_attempts=1, poll_interval=1.0),
            longrun=LongrunConfig(batch_line_failure_rate=0.5, seed=11),
            fallback=fallback,
        )
        requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(40)])
        name = runner.submit(requests, name="q").name
        with pytest.raises(QuotaExhausted):
            runner.wait(name)
        # Stopped at once: the stragglers go out concurrently (the online engine's window starts at 8), so
        # those already in flight when the quota error came may finish, but nothing new is issued after it.
        assert 3 <= len(calls) <= 3 + InFlightWindow().floor
        status = runner.status(name)
        assert status.failed == 0 and status.retry > 0  # nothing marked failed; the rest waits for a rerun
        kept = status.done
        runner.fallback = post  # credit added: the same job goes on from there
        final = runner.wait(name)
    assert final.complete and final.done == 40 and final.done > kept
    runner.collect("q", tmp_path / "out.jsonl")
    assert all(r["response"]["status_code"] == 200 for r in read_results(tmp_path / "out.jsonl"))


def test_the_online_fallback_records_every_error_result_never_a_hopeless_stop(tmp_path: Path) -> None:
    """Stragglers answered online are single failures: even ten identical 400s are all recorded (the run's
    "first answers all fail the same way: stop" rule is for whole jobs, not for a batch job's fallback)."""
    from ratepilot.batch.online import answer_online
    from ratepilot.requests import RequestLine
    from ratepilot.results import read_results as read

    def fallback(url: str, body: Any) -> tuple[int, str, Any]:
        return 400, "req_x", {"error": {"message": "bad", "type": "invalid_request_error", "code": "bad_request"}}

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    requests = [RequestLine(i + 1, f"r{i}", "POST", "/v1/chat/completions", body) for i in range(10)]
    target = tmp_path / "fallback.jsonl"
    stats = answer_online(fallback, requests, target)
    assert stats.stop is None and stats.http_errors == 10
    assert [line["custom_id"] for line in read(target)] == [f"r{i}" for i in range(10)]


def test_fallback_posts_through_the_runners_raw_sdk_path(fake_sim: Simulator) -> None:
    # The raw path: the body exactly as the server sent it (no SDK model in between), errors included.
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as client:
        call = sdk_fallback(client)
        status, request_id, body = call("/v1/chat/completions", chat_line(0)["body"])
        assert status == 200 and request_id and body["object"] == "chat.completion"
        assert body["system_fingerprint"] == "fp_ratepilot_sim"  # a field the answer carries through untouched
        status, _, body = call("/v1/chat/completions", {"model": "gpt-4o-mini"})  # no messages: a 400
        assert status == 400 and "error" in body
    assert api_path("/v1/embeddings") == "/embeddings" and api_path("/embeddings") == "/embeddings"
