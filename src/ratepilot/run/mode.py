"""``--mode auto``: when is the Batch API worth it? A pure rule, documented here and printed in the summary.

Batch is chosen when **all** of these hold, otherwise online:

1. the job is large enough: at least ``batch_min_requests`` (default 2,000) requests still to do, **or** an
   estimated online cost of at least ``batch_min_saving_usd × 2`` (default $2, i.e. a saving of $1 or more —
   the Batch API costs 50%);
2. no ``--deadline`` tighter than the batch completion window (24 h): the Batch API promises results within
   the window, not sooner; with ``--tier auto`` (the router), a deadline of 24 h or more is enough on its own
   (rules 1 aside): the Batch API costs what flex costs, and never lacks capacity;
3. the job has one endpoint: a Batch job takes one ``url`` for all its lines, so a file mixing endpoints
   (say chat completions and embeddings) runs online (``--mode batch`` refuses it as bad input).

Below the threshold an online run finishes in minutes at the edge of the limits and the saving is small;
above it, half price and a separate rate-limit pool win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["BATCH_WINDOW_S", "ModeChoice", "ModeName", "choose_mode"]

ModeName = Literal["online", "batch", "auto"]
BATCH_WINDOW_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class ModeChoice:
    mode: Literal["online", "batch"]
    reason: str


def choose_mode(
    requested: ModeName,
    *,
    pending_requests: int,
    estimated_cost_usd: float,
    deadline_s: float | None = None,
    tier: str | None = None,
    window_s: float = BATCH_WINDOW_S,
    batch_min_requests: int = 2_000,
    batch_min_saving_usd: float = 1.0,
    endpoints: Sequence[str] = (),
) -> ModeChoice:
    """Resolve ``requested`` (``online``/``batch``/``auto``) to a mode and say why.

    ``endpoints``: the distinct urls of the job (more than one rules the Batch API out). ``window_s``: the Batch
    API's completion window (24 h; a simulator whose batch time runs faster shrinks it, as bench/tiers.py does).
    """
    if requested == "online":
        return ModeChoice("online", "--mode online")
    if requested == "batch":
        if deadline_s is not None and deadline_s < window_s:
            return ModeChoice("batch", "--mode batch (note: the Batch API only promises results within 24h)")
        return ModeChoice("batch", "--mode batch")
    saving = estimated_cost_usd / 2
    if len(endpoints) > 1:
        return ModeChoice(
            "online",
            f"auto: the job mixes endpoints ({', '.join(sorted(endpoints))}); a Batch job has one endpoint",
        )
    if deadline_s is not None and deadline_s < window_s:
        return ModeChoice("online", f"auto: --deadline {deadline_s:g}s is tighter than the 24h batch window")
    if tier == "auto" and deadline_s is not None:
        # The router's cheapest lane: the Batch price, like flex, but never short of capacity and in its own pool.
        return ModeChoice(
            "batch", f"auto: --tier auto and --deadline {deadline_s:g}s allow the Batch API's 24h (half price)"
        )
    if pending_requests >= batch_min_requests:
        return ModeChoice(
            "batch",
            f"auto: {pending_requests:,} requests to do >= {batch_min_requests:,}; the Batch API halves the cost"
            f" (est. saving ${saving:.2f}) and has its own rate-limit pool",
        )
    if saving >= batch_min_saving_usd:
        return ModeChoice("batch", f"auto: est. saving ${saving:.2f} >= ${batch_min_saving_usd:.2f} at batch prices")
    return ModeChoice(
        "online",
        f"auto: small job ({pending_requests:,} requests < {batch_min_requests:,}, est. saving ${saving:.2f}"
        f" < ${batch_min_saving_usd:.2f}); online finishes sooner",
    )
