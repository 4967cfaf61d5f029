"""Batches read the endpoint registry: each batch endpoint's lines are answered by that endpoint's generator,
and a line the registry cannot route becomes an error line, never an exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from longrun_helpers import jsonl, upload
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import SimConfig, SimState
from ratepilot.sim.endpoints import BATCH_ENDPOINTS, ENDPOINTS
from ratepilot.sim.longrun import LongrunConfig, configure
from ratepilot.sim.longrun.batch_validation import BatchLine, BatchValidation

# What only this endpoint's answer has (a line answered by another endpoint's generator lacks it).
SIGNATURE = {
    "/v1/chat/completions": lambda body: body["object"] == "chat.completion",
    "/v1/completions": lambda body: body["object"] == "text_completion",
    "/v1/embeddings": lambda body: body["object"] == "list" and body["data"][0]["object"] == "embedding",
    "/v1/responses": lambda body: body["object"] == "response",
    "/v1/moderations": lambda body: body["id"].startswith("modr-") and "flagged" in body["results"][0],
}


def test_every_batch_endpoint_has_a_signature() -> None:
    assert set(SIGNATURE) == set(BATCH_ENDPOINTS)


@pytest.mark.parametrize("endpoint", BATCH_ENDPOINTS)
def test_a_batch_line_is_answered_by_its_own_endpoint(
    endpoint: str, client: OpenAI, sim_clock: FakeClock, longrun: Callable[..., Any]
) -> None:
    longrun(batch_lines_per_second=100, batch_validation_seconds=1, batch_finalizing_seconds=1)
    example = dict(ENDPOINTS[endpoint].example)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": example} for i in range(2)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint=endpoint,  # type: ignore[arg-type]  # the SDK's literal type lags the API's list
        completion_window="24h",
    )
    sim_clock.advance(5)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.output_file_id is not None
    records = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["response"]["status_code"] == 200
        assert SIGNATURE[endpoint](record["response"]["body"])


def test_a_batch_line_without_a_model_is_a_400_error_line() -> None:
    """File validation refuses such files, but the line runner must not depend on it: it answers a 400."""
    clock = FakeClock()
    state = SimState(SimConfig(), clock)
    store = configure(state, LongrunConfig(batch_lines_per_second=10, batch_validation_seconds=1))
    lines = tuple(BatchLine(i + 1, f"m{i}", {"input": "no model here"}) for i in range(3))
    for endpoint in BATCH_ENDPOINTS:
        with store.lock:
            batch = store.batches.create(
                org="org-no-model",
                endpoint=endpoint,
                input_file_id="file-x",
                completion_window="24h",
                metadata=None,
                validation=BatchValidation(lines=lines, model="gpt-4o-mini"),
                config=store.config,
                now=store.now(),
            )
        clock.advance(60)
        store.advance()
        assert batch.status == "completed", endpoint
        assert batch.failed == len(lines) and batch.output_file_id is None
        assert batch.error_file_id is not None
        text = store.file_text("org-no-model", batch.error_file_id)
        assert text is not None
        for record in map(json.loads, text.splitlines()):
            assert record["response"]["status_code"] == 400
            error = record["response"]["body"]["error"]
            assert (error["code"], error["param"]) == ("missing_required_parameter", "model")
