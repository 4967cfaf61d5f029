"""Where ratepilot keeps its state: ``$RATEPILOT_HOME`` or ``~/.ratepilot``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["state_dir"]


def state_dir() -> Path:
    """The state directory, created on first use (SQLite state, caches, limiter store)."""
    path = Path(os.environ.get("RATEPILOT_HOME") or Path.home() / ".ratepilot")
    path.mkdir(parents=True, exist_ok=True)
    return path
