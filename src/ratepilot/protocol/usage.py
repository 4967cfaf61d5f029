"""The ``usage`` object of a response, whatever the endpoint.

Chat, completions and embeddings report ``prompt_tokens``/``completion_tokens`` (with
``prompt_tokens_details.cached_tokens``); the Responses API and batches report ``input_tokens``/
``output_tokens`` (with ``input_tokens_details``). Everything that reads usage — the client's settling and
ledger, the runner's summary, the batch collector, the simulator — reads it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage", "usage_from_body", "usage_from_mapping"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a response reports (``cached`` is part of ``prompt``)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_mapping(u: Any) -> Usage | None:
    """A ``usage`` object of either naming scheme; None when ``u`` is not one."""
    if not isinstance(u, Mapping):
        return None
    if "input_tokens" in u or "output_tokens" in u:
        details = u.get("input_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        return Usage(_int(u.get("input_tokens")), _int(u.get("output_tokens")), cached)
    if "prompt_tokens" in u or "completion_tokens" in u:
        details = u.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        return Usage(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), cached)
    return None


def usage_from_body(body: Any) -> Usage | None:
    """The usage of a parsed response body (a dict with a ``usage`` key); None when it reports none."""
    return usage_from_mapping(body.get("usage")) if isinstance(body, Mapping) else None
