"""Fixtures for the waiting tests: webhook secrets and signed deliveries."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from ratepilot.clock import Clock
from ratepilot.protocol.webhooks import new_secret, signature_headers


@pytest.fixture
def secret() -> str:
    return new_secret()


def event_body(object_id: str, event_type: str = "batch.completed", event_id: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "object": "event",
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "type": event_type,
            "created_at": 1_767_225_600,
            "data": {"id": object_id},
        }
    )


def delivery(
    secret: str, clock: Clock, body: bytes, *, webhook_id: str | None = None, age: float = 0.0
) -> dict[str, Any]:
    """Headers of one signed delivery, timestamped ``age`` seconds before the clock's wall time."""
    headers = signature_headers(secret, webhook_id or f"msg_{uuid.uuid4().hex}", int(clock.wall() - age), body)
    return {**headers, "content-type": "application/json"}


BATCH_TERMINAL = ("completed", "failed", "expired", "cancelled")


def batch_lines(n: int, model: str = "gpt-4o-mini") -> bytes:
    return "\n".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 5},
            }
        ).decode()
        for i in range(n)
    ).encode()


def longrun_for(duration: float, lines: int, **extra: Any) -> Any:
    """A simulator config where a batch of ``lines`` lasts ``duration`` s: 2% validating, 2% finalizing."""
    from ratepilot.sim.longrun import LongrunConfig

    return LongrunConfig(
        batch_validation_seconds=0.02 * duration,
        batch_finalizing_seconds=0.02 * duration,
        batch_lines_per_second=lines / (0.96 * duration),
        **extra,
    )


def create_batch(client: Any, lines: int) -> Any:
    import io

    f = client.files.create(file=("requests.jsonl", io.BytesIO(batch_lines(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
