"""Review fixes in the Batch pipeline: the Pilot's errors become exit codes (no traceback, no key); the online
fallback stops on quota/budget keeping what it answered; a failed poll is a missed poll; renames are durable;
the fallback posts through the runner's one raw-SDK path."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from ratepilot.batch import BatchConfig, BatchRunner, sdk_fallback
from ratepilot.cli import app
from ratepilot.engine.sender import api_path
from ratepilot.engine.window import InFlightWindow
from ratepilot.errors import BudgetExceeded, QuotaExhausted, RequestTooLarge, RetriesExhausted
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig

from .conftest import API_KEY, chat_line, read_results, write_jsonl

LONG_KEY = "sk-" + "test-batch-review-0123456789abcdef"  # key-shaped at run time: must never be printed


@pytest.fixture(scope="module")
def cli_sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_ms=0)) as s:
        yield s


def _connection_error(cause: BaseException) -> openai.APIConnectionError:
    """What the SDK raises when the Pilot's transport raised ``cause`` inside the HTTP call."""
    exc = openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1/v1/files"))
    exc.__cause__ = cause
    return exc


_PILOT_ERRORS: dict[str, tuple[Callable[[], BaseException], ExitCode]] = {
    "quota": (lambda: QuotaExhausted("insufficient_quota", model="gpt-4o-mini"), ExitCode.QUOTA),
    "budget": (
        lambda: BudgetExceeded(budget_usd=0.01, spent_usd=0.01, worst_case_usd=0.002, model="gpt-4o-mini"),
        ExitCode.BUDGET,
    ),
    "too_large": (lambda: RequestTooLarge(model="gpt-4o-mini", limit=100, requested=1000), ExitCode.API_ERROR),
    "retries": (
        lambda: RetriesExhausted(
            attempts=5, reason="max attempts", last_status=503, last_message=f"overloaded for {LONG_KEY}"
        ),
        ExitCode.API_ERROR,
    ),
    "wrapped_quota": (lambda: _connection_error(QuotaExhausted("insufficient_quota")), ExitCode.QUOTA),
}


@pytest.mark.parametrize("kind", sorted(_PILOT_ERRORS))
def test_batch_cli_maps_pilot_errors_to_exit_codes(
    kind: str, cli_sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, expected = _PILOT_ERRORS[kind]

    def submit(self: BatchRunner, requests: Any, *, name: str | None = None) -> Any:
        raise make()

    monkeypatch.setattr(BatchRunner, "submit", submit)
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(0)])
    env = {"OPENAI_API_KEY": LONG_KEY, "OPENAI_BASE_URL": cli_sim.base_url, "RATEPILOT_HOME": str(tmp_path / "s")}
    result = CliRunner().invoke(app, ["batch", "submit", str(requests), "--name", "e"], env=env)
    assert result.exit_code == expected, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and LONG_KEY not in result.output
    assert result.output.startswith("error: ")


def test_fallback_stops_on_quota_keeping_what_it_answered(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    with OpenAI(base_url=fake_sim.base_url, api_key=API_KEY, max_retries=0) as online:
        post = sdk_fallback(online)
        calls: list[str] = []

        def fallback(url: str, body: Any) -> tuple[int, str | None, Any]:
            calls.append(url)
            if len(calls) == 3:
                raise _connection_error(QuotaExhausted("insufficient_quota"))  # as the SDK wraps the Pilot's
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


@pytest.mark.parametrize("poll_interval", [1.0, None], ids=["fixed", "adaptive"])
def test_failed_polls_are_missed_polls_with_back_off(
    poll_interval: float | None, tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner(config=BatchConfig(poll_interval=poll_interval))
    batches = runner.client.batches
    real = batches.retrieve
    failures: list[float] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if len(failures) < 4:  # under PollPolicy.max_failures (5): a blip, not an outage
            failures.append(fake_sim.clock.now())
            if len(failures) % 2:
                raise openai.APIConnectionError(request=httpx2.Request("GET", "http://127.0.0.1/v1/batches/x"))
            raise RetriesExhausted(attempts=3, reason="max attempts", last_status=503)
        return real(*args, **kwargs)

    batches.retrieve = flaky  # type: ignore[method-assign]
    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(5)])
    status = runner.wait(runner.submit(requests, name="p").name)
    assert status.complete and status.done == 5 and len(failures) == 4
    gaps = [b - a for a, b in itertools.pairwise(failures)]
    assert all(g > 0 for g in gaps)  # backed off (fake clock): never a hot loop


def test_persistent_poll_failures_are_raised(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner]
) -> None:
    runner = make_runner()
    batches = runner.client.batches

    def down(*args: Any, **kwargs: Any) -> Any:
        raise openai.APIConnectionError(request=httpx2.Request("GET", "http://127.0.0.1/v1/batches/x"))

    requests = write_jsonl(tmp_path / "r.jsonl", [chat_line(i) for i in range(3)])
    name = runner.submit(requests, name="down").name
    batches.retrieve = down  # type: ignore[method-assign]
    with pytest.raises(openai.APIConnectionError):
        runner.wait(name)


def test_renames_are_made_durable(
    tmp_path: Path, fake_sim: Simulator, make_runner: Callable[..., BatchRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ratepilot.batch import collect as collect_mod
    from ratepilot.batch import runner as runner_mod

    synced: list[Path] = []
    monkeypatch.setattr(collect_mod, "fsync_dir", synced.append)
    monkeypatch.setattr(runner_mod, "fsync_dir", synced.append)
    runner = make_runner()
    name = runner.submit(iter([chat_line(i) for i in range(3)]), name="dur").name  # materialized input
    inputs = runner.state_dir / "batches" / "_inputs"
    assert inputs in synced
    runner.wait(name)
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    runner.collect(name, out)
    assert out.parent in synced and (runner.state_dir / "batches" / name) in synced  # results; downloads


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
