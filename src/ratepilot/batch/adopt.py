"""Find a job's batches on the server when the local state that tracked them was lost.

Every batch ratepilot creates carries its job's name, the fingerprint of its input, the plan's nonce and its
shard number in ``metadata``. When a job is planned afresh — ``batch.sqlite3`` deleted, another machine,
a new state directory — the server is asked first (the list endpoint has no metadata filter: the newest
batches are scanned), so a job whose batches exist is adopted, not paid for twice.

:func:`match_lost` is pure: the batches found and the fresh plan in, an :class:`Adoption` (or the reason
the two do not fit) out. The runner does the calls and records the adoption in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .state import ShardRecord

__all__ = ["SCAN_MAX_BATCHES", "SCAN_MAX_DAYS", "Adoption", "find_lost", "match_lost"]

SCAN_MAX_DAYS = 30
"""Batches older than this are not looked at: their output files are deleted by then (30 days by default)."""
SCAN_MAX_BATCHES = 2_000
"""At most this many of the newest batches are looked at (20 list calls): an hour of the creation limit."""


@dataclass(frozen=True)
class Adoption:
    """The earlier plan's nonce and, per shard number of the fresh plan, its latest batch on the server."""

    nonce: str
    batches: Mapping[int, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # batches of later rounds (retries): not adopted, their lines run again


def find_lost(batches: Iterable[Any], job: str, input_tag: str, *, now: float) -> list[Any]:
    """The batches (newest first, as the list endpoint gives them) created for job ``job`` from this input."""
    found: list[Any] = []
    for n, batch in enumerate(batches):
        if n >= SCAN_MAX_BATCHES or (batch.created_at or 0) < now - SCAN_MAX_DAYS * 86_400:
            break
        meta = dict(batch.metadata or {})
        if meta.get("ratepilot_job") == job and meta.get("ratepilot_input") == input_tag:
            found.append(batch)
    return found


def match_lost(
    found: list[Any],
    shards: list[ShardRecord],
    file_fits: Callable[[str, ShardRecord, Any], bool],
) -> Adoption | str:
    """Pair the batches found with the fresh plan's shards, or say why they cannot be.

    The newest batch's nonce names the plan that was lost; of its batches, the latest submission per shard
    is taken. ``file_fits(nonce, shard, batch)`` checks that the batch's input file is the one this plan would
    upload for that shard (same name and size): a plan made with other options does not fit, and then
    nothing is adopted (the caller refuses to submit the job again without being told to).
    """
    nonce = str(dict(found[0].metadata or {}).get("ratepilot_nonce", ""))
    by_number = {s.shard: s for s in shards}
    latest: dict[int, tuple[int, Any]] = {}
    skipped: list[str] = []
    for batch in found:
        meta = dict(batch.metadata or {})
        if meta.get("ratepilot_nonce") != nonce:
            continue  # an older plan of the same input, superseded by the newest one
        try:
            number, submit = int(meta.get("ratepilot_shard", "")), int(meta.get("ratepilot_submit", "0"))
        except ValueError:
            continue
        if number not in by_number:
            skipped.append(batch.id)  # a retry round's shard: its lines are planned again from the results
            continue
        if number not in latest or submit > latest[number][0]:
            latest[number] = (submit, batch)
    misfits = [b.id for number, (_, b) in sorted(latest.items()) if not file_fits(nonce, by_number[number], b)]
    if misfits:
        return (
            f"{len(found)} batch(es) of this job from this input exist on the server ({', '.join(misfits[:3])}"
            f"{', ...' if len(misfits) > 3 else ''}), but they do not match the plan made now (other "
            "--max-requests/--max-bytes?). Rerun with the options of the first submit to adopt them, or pass another "
            "--name to submit (and pay for) the job again"
        )
    return Adoption(nonce, {number: batch for number, (_, batch) in latest.items()}, tuple(skipped))
