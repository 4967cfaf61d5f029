"""Rate-limit headers: Go-style durations and the ``x-ratelimit-*`` family.

The server reports ``limit``/``remaining``/``reset`` for requests and tokens (and, where a project limit
applies, project tokens). ``reset`` is a Go duration (``12ms``, ``8.64s``, ``6m0s``, ``1h2m3.5s``): the time
until that bucket would be full again if nothing else were sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DimensionState",
    "RateLimitHeaders",
    "format_duration",
    "parse_duration",
    "parse_retry_after",
    "parse_try_again_in",
]

_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration(text: str) -> float:
    """Parse a Go duration (``1h2m3.5s``, ``120ms``, ``0s``) into seconds.

    A bare number is taken as seconds, which is what ``retry-after`` style values look like. Raises
    ``ValueError`` on anything else, so a caller can decide to ignore a malformed header.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid duration {text!r}")
        return value
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds the way the API does: ``12ms`` below a second, ``8.64s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        ms = max(1, math.ceil(seconds * 1000))
        return "1s" if ms >= 1000 else f"{ms}ms"
    if seconds < 60:
        # Go prints up to nanosecond precision; the API's values show at most 3 decimals.
        txt = f"{math.ceil(seconds * 1000) / 1000:.3f}".rstrip("0").rstrip(".")
        return f"{txt}s"
    whole = math.ceil(seconds)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


_TRY_AGAIN = re.compile(r"(?:try again|retry) in ((?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+)", re.IGNORECASE)


def parse_try_again_in(message: str) -> float | None:
    """Extract the wait from "... Please try again in 20s." (the only place a daily-limit wait appears)."""
    m = _TRY_AGAIN.search(message or "")
    if not m:
        return None
    try:
        return parse_duration(m.group(1))
    except ValueError:
        return None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` (Azure, read first as the SDK does), then ``retry-after`` in seconds."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is not None:
        try:
            v = float(ra)
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class DimensionState:
    """What the server said about one bucket: its capacity, what is left, and seconds until full."""

    limit: int
    remaining: int
    reset: float


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """The parsed ``x-ratelimit-*`` headers of one response; a missing or malformed dimension is ``None``."""

    requests: DimensionState | None
    tokens: DimensionState | None
    project_tokens: DimensionState | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateLimitHeaders:
        return cls(
            requests=_dimension(headers, "requests"),
            tokens=_dimension(headers, "tokens"),
            project_tokens=_dimension(headers, "project-tokens"),
        )

    @property
    def empty(self) -> bool:
        return self.requests is None and self.tokens is None and self.project_tokens is None

    def or_else(self, other: RateLimitHeaders) -> RateLimitHeaders:
        """These headers, with each family they lack taken from ``other`` (themselves if that adds nothing: this
        runs on every response)."""
        if (
            (self.requests is not None or other.requests is None)
            and (self.tokens is not None or other.tokens is None)
            and (self.project_tokens is not None or other.project_tokens is None)
        ):
            return self
        return RateLimitHeaders(
            requests=self.requests or other.requests,
            tokens=self.tokens or other.tokens,
            project_tokens=self.project_tokens or other.project_tokens,
        )

    def to_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, dim in (
            ("requests", self.requests),
            ("tokens", self.tokens),
            ("project-tokens", self.project_tokens),
        ):
            if dim is not None:
                out[f"x-ratelimit-limit-{name}"] = str(dim.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(dim.remaining)
                out[f"x-ratelimit-reset-{name}"] = format_duration(dim.reset)
        return out


def _dimension(headers: Mapping[str, str], name: str) -> DimensionState | None:
    limit = headers.get(f"x-ratelimit-limit-{name}")
    remaining = headers.get(f"x-ratelimit-remaining-{name}")
    reset = headers.get(f"x-ratelimit-reset-{name}")
    if limit is None or remaining is None or reset is None:
        return None
    try:
        lim, rem, rst = int(limit), int(remaining), parse_duration(reset)
    except ValueError:
        return None
    if lim <= 0 or rem < 0:
        return None
    return DimensionState(limit=lim, remaining=min(rem, lim), reset=rst)
