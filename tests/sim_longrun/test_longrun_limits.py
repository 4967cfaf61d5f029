"""Long-running objects and the account's limits: polls cost requests, batch lines cost half and no TPM."""

from __future__ import annotations

import openai
import pytest
from longrun_helpers import EP, batch_lines, jsonl, upload
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure, shutdown


def test_every_poll_costs_one_request() -> None:
    clock = FakeClock()
    with (
        Simulator(SimConfig(rpm=4, tpm=1_000_000), clock=clock) as sim,
        OpenAI(base_url=sim.base_url, api_key="sk-test-polls-0001", max_retries=0) as client,
    ):
        configure(sim.state, LongrunConfig())
        file_id = upload(client, jsonl(batch_lines(1)))  # 1
        batch = client.batches.create(input_file_id=file_id, endpoint=EP, completion_window="24h")  # 2
        client.batches.retrieve(batch.id)  # 3
        raw = client.batches.with_raw_response.retrieve(batch.id)  # 4
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            client.batches.retrieve(batch.id)
        assert info.value.code == "rate_limit_exceeded"
        assert "requests per min (RPM)" in info.value.message
        shutdown(sim.state)


def test_batch_lines_cost_half_and_leave_per_minute_limits_alone() -> None:
    clock = FakeClock()
    # TPM far below what the batch's lines use: batch traffic is a separate pool.
    with (
        Simulator(SimConfig(rpm=1_000, tpm=200), clock=clock) as sim,
        OpenAI(base_url=sim.base_url, api_key="sk-test-price-0002", max_retries=0) as client,
    ):
        configure(sim.state, LongrunConfig(batch_lines_per_second=1_000))
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(batch_lines(50))), endpoint=EP, completion_window="24h"
        )
        clock.advance(60)
        raw = client.batches.with_raw_response.retrieve(batch.id)
        batch = raw.parse()
        org = raw.headers["openai-organization"]
        assert batch.status == "completed" and batch.usage is not None
        assert batch.usage.input_tokens > 200  # more than a minute's TPM went through the batch
        chat = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert int(chat.headers["x-ratelimit-remaining-tokens"]) >= 200 - 10  # only this request's cost
        usage = sim.stats()["usage"][org]
        sync_cost = sim.state.config.prices.cost("gpt-4o-mini", 0, 0)
        chat_usage = chat.parse().usage
        assert chat_usage is not None
        sync_cost = sim.state.config.prices.cost("gpt-4o-mini", chat_usage.prompt_tokens, chat_usage.completion_tokens)
        full = sim.state.config.prices.cost("gpt-4o-mini", batch.usage.input_tokens, batch.usage.output_tokens)
        assert usage["cost_usd"] == pytest.approx(full / 2 + sync_cost, rel=1e-9)
        shutdown(sim.state)


def test_sim_reset_drops_long_running_objects() -> None:
    with (
        Simulator(SimConfig(), clock=FakeClock()) as sim,
        OpenAI(base_url=sim.base_url, api_key="sk-test-reset-0004", max_retries=0) as client,
    ):
        configure(sim.state, LongrunConfig(batch_validation_seconds=7))
        file_id = upload(client, jsonl(batch_lines(1)))
        sim.reset()
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(file_id)
        batch = client.batches.create(
            input_file_id=upload(client, jsonl(batch_lines(1))), endpoint=EP, completion_window="24h"
        )
        sim.clock.advance(6)  # type: ignore[attr-defined]
        assert client.batches.retrieve(batch.id).status == "validating"  # the configuration survives a reset
        shutdown(sim.state)
