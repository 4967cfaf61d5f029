"""Long-running objects in the simulator: files, batches, background responses, Assistants runs, webhooks.

Placeholder: the app includes ``routes(state)`` and calls ``tick(state)``; filled in by the long-running
objects work.
"""

from __future__ import annotations

from typing import Any

__all__ = ["routes", "tick"]


def routes(state: Any) -> list[Any]:
    """Starlette routes for the long-running endpoints (none yet)."""
    _ = state
    return []


def tick(state: Any) -> None:
    """Advance lifecycles to the state's current time (nothing yet)."""
    _ = state
