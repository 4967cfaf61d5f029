"""ratepilot: run OpenAI API workloads at the edge of the account's rate limits."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
