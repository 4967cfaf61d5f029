"""How ratepilot writes figures for people: money, durations, and error counts by code.

One spelling everywhere (the run's progress and summary, ``ratepilot status``, ``report``, ``batch``), so the same
job reads the same on every screen.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["by_code", "duration", "money"]


def money(usd: float) -> str:
    """``$0.000123`` (six decimals under a cent), ``$1.2345`` (four under $10), ``$12.35``."""
    return f"${usd:,.6f}" if usd < 0.01 else f"${usd:,.4f}" if usd < 10 else f"${usd:,.2f}"


def duration(seconds: float | None) -> str:
    """``1h02m03s``, ``2m03s``, ``3s``; ``-`` for an unknown one."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def by_code(counts: Mapping[str, int], limit: int | None = None) -> str:
    """ "3 x 404 model_not_found, 1 x batch_expired": the most frequent first (at most ``limit`` codes)."""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = ranked if limit is None else ranked[:limit]
    text = ", ".join(f"{n:,} x {code}" for code, n in shown)
    return text + (f", and {len(ranked) - len(shown)} more codes" if len(shown) < len(ranked) else "")
