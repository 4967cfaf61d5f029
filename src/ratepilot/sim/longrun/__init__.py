"""Long-running objects in the simulator: files, batches, background responses, Assistants runs, webhooks.

The simulator's app includes :func:`routes` and calls :func:`tick` at the start of every request: no object
changes in the background, every lifecycle is computed from the clock when someone looks (and, with webhooks
configured, by the webhook sender's thread so events fire without polling).

Configure with :func:`configure` (``configure(sim.state, LongrunConfig(time_scale=86_400, ...))``) or through
``state.config.longrun`` (a :class:`LongrunConfig` or a mapping of its fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.routing import BaseRoute

from .config import LongrunConfig
from .http_assistants import assistants_routes
from .http_batches import batch_routes
from .http_files import file_routes
from .http_responses import create_background_response as _create_background_response
from .http_responses import response_routes
from .store import LongrunStore, store_for
from .store import configure as _configure

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


def routes(state: Any) -> list[BaseRoute]:
    """Starlette routes for ``/v1/files``, ``/v1/batches``, ``/v1/responses/{id}``, the Assistants API; also
    installs the background-response hook and the reset hook on ``state``."""
    _install_hooks(state)
    store_for(state)  # build the store now: a bad [longrun] configuration fails at startup, not mid-request

    # Handlers look the store up per request, so configure() may replace it after the app is built.
    def store_of() -> LongrunStore:
        return store_for(state)

    return [*file_routes(store_of), *batch_routes(store_of), *response_routes(store_of), *assistants_routes(store_of)]


def tick(state: Any) -> None:
    """Advance every lifecycle to the state's clock (cheap when nothing is pending)."""
    store_for(state).advance()


def configure(state: Any, config: LongrunConfig) -> LongrunStore:
    """Use ``config`` for ``state`` from now on (existing long-running objects are dropped)."""
    _install_hooks(state)
    return _configure(state, config)


def shutdown(state: Any) -> None:
    """Stop the webhook sender thread, if any (it also stops by itself when idle)."""
    store_for(state).close()


def stats(state: Any) -> dict[str, Any]:
    """Long-running objects by status and webhook deliveries, for ``GET /sim/stats``."""
    return store_for(state).stats()


def create_background_response(state: Any, org: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """``POST /v1/responses`` with ``background: true``, after the caller authenticated, validated and
    charged it: ``(200, queued response object)``."""
    return _create_background_response(store_for(state), org, body)


def _install_hooks(state: Any) -> None:
    if hasattr(state, "background_response"):
        state.background_response = lambda org, body: create_background_response(state, org, body)
    hooks = getattr(state, "reset_hooks", None)
    if isinstance(hooks, list) and not any(getattr(h, "_longrun", False) for h in hooks):

        def reset() -> None:
            old = store_for(state)
            _configure(state, old.config)

        reset._longrun = True  # type: ignore[attr-defined]
        hooks.append(reset)
