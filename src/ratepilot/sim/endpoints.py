"""The registry of the simulator's model endpoints: one entry per path, read by every part of the simulator.

Each :class:`Endpoint` says how its body is validated, which generator answers it, how its tokens are
charged at admission, and what it supports (streaming, service tiers, ``background: true``, batches, being
served online). The ASGI app routes by it, :meth:`SimState.execute` (batch lines, background responses,
Assistants runs) answers by it, and ``sim.longrun`` takes the batch endpoints and their per-batch input
counting from it. Nothing else lists endpoints, so an endpoint cannot be half-added: a path that is not here
is a 404 everywhere, and a path that is here is handled the same way everywhere.

To add an endpoint: write its :class:`~ratepilot.sim.validation.BodyRules` (``validation.py``) and its
:data:`~ratepilot.sim.content.Generator` (``content.py``) beside their siblings, then add one entry below.
Its prompt text must be something :func:`ratepilot.protocol.tokens.request_texts` reads (the client's
limiter charges with the same rule); ``tests/sim/test_sim_registry.py`` runs every entry's ``example`` body
through every part and fails if one of them does not know the endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..protocol.tokens import admission_cost
from . import content
from .config import ModelSpec, SimConfig
from .content import Generated, Generator, IdFactory
from .validation import CHAT, COMPLETIONS, EMBEDDINGS, MODERATIONS, RESPONSES, BodyRules

__all__ = [
    "BATCH_ENDPOINTS",
    "ENDPOINTS",
    "ONLINE_ENDPOINTS",
    "Endpoint",
    "count_embedding_inputs",
]

TokenRule = Callable[[str, Mapping[str, Any]], int]
"""``(path, body) -> tokens`` charged against TPM/TPD at admission."""


def count_embedding_inputs(body: Mapping[str, Any]) -> int:
    """Inputs in one embeddings request: a string or a token array is one, a list of them is its length."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Everything the simulator knows about one model endpoint."""

    path: str
    rules: BodyRules
    generate: Generator
    model_kind: str | None
    """The :attr:`ModelSpec.kind` it serves (``"chat"``, ``"embedding"``); ``None``: any model."""
    example: Mapping[str, Any] = field(repr=False)
    """A small valid body (for a default model): the registry's tests send it through every part."""
    admission: TokenRule = admission_cost
    stream: Literal["chat", "text"] | None = None
    """``stream: true`` is served as SSE, with chat-completion chunks or text-completion chunks."""
    tiered: bool = False
    """Takes ``service_tier`` (flex refusals, tier latency and prices; the answer names the serving tier)."""
    background: bool = False
    """``background: true`` is handed to the long-running objects (``state.longrun``)."""
    online: bool = True
    """Served as a synchronous ``POST``; ``False``: only as a batch's endpoint."""
    batchable: bool = True
    """Accepted as ``endpoint`` of ``POST /v1/batches``."""
    batch_inputs: Callable[[Mapping[str, Any]], int] | None = None
    """Counts a line's inputs against the per-batch input cap (``batch_max_embedding_inputs``)."""

    def respond(
        self, config: SimConfig, spec: ModelSpec, body: Mapping[str, Any], new_id: IdFactory, now: int
    ) -> Generated:
        """The answer to a validated body for a known model. Raises :class:`ApiError` (wrong model kind,
        context length, ...)."""
        if self.model_kind is not None and spec.kind != self.model_kind:
            raise content.wrong_model_kind(spec, self.model_kind, self.path)
        return self.generate(config, spec, body, new_id, now)


_ENTRIES = (
    # In the order the batch-create error lists its supported values.
    Endpoint(
        "/v1/responses",
        RESPONSES,
        content.responses,
        "chat",
        {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5},
        tiered=True,
        background=True,
    ),
    Endpoint(
        "/v1/chat/completions",
        CHAT,
        content.chat,
        "chat",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        stream="chat",
        tiered=True,
    ),
    Endpoint(
        "/v1/embeddings",
        EMBEDDINGS,
        content.embeddings,
        "embedding",
        {"model": "text-embedding-3-small", "input": "hi", "dimensions": 4},
        batch_inputs=count_embedding_inputs,
    ),
    Endpoint(
        "/v1/completions",
        COMPLETIONS,
        content.completions,
        "chat",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 5},
        stream="text",
    ),
    Endpoint(
        "/v1/moderations",
        MODERATIONS,
        content.moderations,
        None,  # no moderation model is served by default: any configured model answers
        {"model": "gpt-4o-mini", "input": "hi"},
        online=False,  # the batch endpoint existed first; serving it online is this flag away
    ),
)

ENDPOINTS: Mapping[str, Endpoint] = {e.path: e for e in _ENTRIES}
"""Every model endpoint by path."""

ONLINE_ENDPOINTS: Mapping[str, Endpoint] = {e.path: e for e in _ENTRIES if e.online}
"""The synchronous ``POST`` routes of the ASGI app."""

BATCH_ENDPOINTS: tuple[str, ...] = tuple(e.path for e in _ENTRIES if e.batchable)
"""The values ``POST /v1/batches`` accepts as ``endpoint``."""
