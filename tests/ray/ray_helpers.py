"""Helpers for the ratepilot.ray tests (a module of its own: a ``conftest`` is not importable by name when several
test directories have one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

KEY = "test-key-ray"  # not sk-shaped: a project check flags anything that looks like a real key
MODEL = "gpt-4o-mini"

PROSE = (
    "The committee met on Tuesday to consider the nomination. Members asked about the budget, the schedule of "
    "the hearings and the witnesses to be called. The chair thanked everyone for their patience and adjourned "
    "the meeting until the following week, when the vote is expected to take place after a short debate."
)


def chat(text: str, max_tokens: int = 2) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def write_requests(path: Path, n: int, *, tag: str = "r", batch_lines: bool = True, text: str = "") -> Path:
    """``n`` chat requests; Batch-API lines (custom_id ``<tag>-<i>``) or bare bodies (``line-<N>``)."""
    with open(path, "wb") as fh:
        for i in range(n):
            body = chat(f"{tag} request {i}. {text}".strip())
            line = {"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(orjson.dumps(line if batch_lines else body) + b"\n")
    return path


def result_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
