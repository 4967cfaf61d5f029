"""Cursor pagination as the list endpoints do it: ``after``/``before``/``limit`` -> ``first_id``, ``last_id``,
``has_more``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["PageError", "paginate"]

T = TypeVar("T")


class PageError(ValueError):
    """A bad ``limit``/``order`` value, with the parameter it names."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageError(f"Invalid 'limit': expected an integer, but got '{raw}' instead.", "limit") from None
    if not 1 <= value <= maximum:
        raise PageError(
            f"Invalid 'limit': integer below minimum value. Expected a value between 1 and {maximum}, but got "
            f"{value} instead."
            if value < 1
            else f"Invalid 'limit': integer above maximum value. Expected a value between 1 and {maximum}, but "
            f"got {value} instead.",
            "limit",
        )
    return value


def paginate(
    items: Sequence[T],
    query: dict[str, str],
    *,
    key: Callable[[T], str],
    render: Callable[[T], dict[str, Any]],
    default_limit: int = 20,
    max_limit: int = 100,
    default_order: str = "desc",
    ordered: bool = True,
) -> dict[str, Any]:
    """One page of ``items`` (given oldest first) as a ``{"object": "list", ...}`` body.

    ``ordered=False``: the endpoint has no ``order`` parameter; ``default_order`` always applies.

    ``after`` / ``before`` are ids of items in the list order; an unknown cursor yields an empty page, which
    is what a client sees when the object was deleted meanwhile.
    """
    limit = _parse_limit(query.get("limit"), default_limit, max_limit)
    order = (query.get("order") or default_order) if ordered else default_order
    if order not in ("asc", "desc"):
        raise PageError(
            f"Invalid value for 'order': expected one of 'asc' or 'desc', but got '{order}' instead.", "order"
        )
    seq = list(items) if order == "asc" else list(reversed(items))
    after, before = query.get("after"), query.get("before")
    if after:
        ids = [key(i) for i in seq]
        seq = seq[ids.index(after) + 1 :] if after in ids else []
    if before:
        ids = [key(i) for i in seq]
        seq = seq[: ids.index(before)] if before in ids else []
        # "before" pages end just before the cursor: take the last `limit` of them.
        page = seq[-limit:]
        has_more = len(seq) > limit
    else:
        page = seq[:limit]
        has_more = len(seq) > limit
    data = [render(i) for i in page]
    return {
        "object": "list",
        "data": data,
        "first_id": key(page[0]) if page else None,
        "last_id": key(page[-1]) if page else None,
        "has_more": has_more,
    }
