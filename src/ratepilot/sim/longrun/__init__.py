"""Long-running objects in the simulator: files, batches, background responses, Assistants runs, webhooks.

The simulator's app includes :func:`routes`, which attaches a :class:`LongrunStore` to the state as
``state.longrun`` (the core's :class:`~ratepilot.sim.state.LongRunning` protocol); the app then calls its
``advance`` at the start of every request: no object changes in the background, every lifecycle is computed
from the clock when someone looks (and, with webhooks configured, by the webhook sender's thread so events
fire without polling).

Configure with :func:`configure` (``configure(sim.state, LongrunConfig(time_scale=86_400, ...))``) or through
``state.config.longrun`` (a :class:`LongrunConfig` or a mapping of its fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.routing import BaseRoute

from ..state import SimState
from .config import LongrunConfig
from .http_assistants import assistants_routes
from .http_batches import batch_routes
from .http_files import file_routes
from .http_responses import response_routes
from .store import LongrunStore, configure, store_for

__all__ = [
    "LongrunConfig",
    "LongrunStore",
    "configure",
    "create_background_response",
    "routes",
    "shutdown",
    "stats",
    "store_for",
    "tick",
]


def routes(state: SimState) -> list[BaseRoute]:
    """Starlette routes for ``/v1/files``, ``/v1/batches``, ``/v1/responses/{id}``, the Assistants API; also
    attaches the state's store (``state.longrun``)."""
    store_for(state)  # build the store now: a bad [longrun] configuration fails at startup, not mid-request

    # Handlers look the store up per request, so configure() may replace it after the app is built.
    def store_of() -> LongrunStore:
        return store_for(state)

    return [*file_routes(store_of), *batch_routes(store_of), *response_routes(store_of), *assistants_routes(store_of)]


def tick(state: SimState) -> None:
    """Advance every lifecycle to the state's clock (cheap when nothing is pending)."""
    store_for(state).advance()


def shutdown(state: SimState) -> None:
    """Stop the webhook sender thread, if any (it also stops by itself when idle)."""
    store_for(state).close()


def stats(state: SimState) -> dict[str, Any]:
    """Long-running objects by status and webhook deliveries, for ``GET /sim/stats``."""
    return store_for(state).stats()


def create_background_response(state: SimState, org: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST /v1/responses`` with ``background: true``, after the caller authenticated, validated and
    charged it: ``(200, queued response object)``."""
    return store_for(state).create_background_response(org, body)
