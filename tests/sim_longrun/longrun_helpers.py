"""Helpers shared by the long-running-objects tests (a module of its own: ``conftest`` names are ambiguous)."""

from __future__ import annotations

import io
import json
from typing import Any

from openai import OpenAI

EP = "/v1/chat/completions"


def batch_lines(n: int, *, model: str = "gpt-4o-mini", prefix: str = "req") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": EP,
            "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 16},
        }
        for i in range(n)
    ]


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def upload(client: OpenAI, data: bytes, name: str = "input.jsonl", purpose: str = "batch") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]
