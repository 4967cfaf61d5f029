"""``ratepilot cache stats|clear``: look at the response cache ``ratepilot run`` answers from, and empty it.

Local state only: no API key, nothing sent. What is cached, and how to keep only deterministic answers, is
``ratepilot run --cache`` (:mod:`ratepilot.cache`).
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ratepilot.exitcodes import ExitCode

from ._output import fail, print_json

__all__ = ["cache_app", "parse_duration", "register"]

cache_app = typer.Typer(
    help="Look at the response cache `ratepilot run` answers from (entries, size, hits, money saved) and empty "
    "it. Local state only: no API key needed. Exit codes: 0 ok, 1 unexpected error, 2 bad input (a bad flag, "
    "a corrupt cache file, clear without --yes and no terminal to ask on).",
    no_args_is_help=True,
)

_CACHE_PATH = typer.Option(
    "--cache-path", help="The cache file (default: cache.sqlite3 in the state dir, $RATEPILOT_HOME or ~/.ratepilot)."
)
_JSON = typer.Option(False, "--json", help="Print one JSON object instead of text (for scripts).")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str) -> float:
    """``"90"`` / ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"``, or a sum such as ``"1d12h"``: seconds."""
    cleaned = text.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(cleaned):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    if not cleaned or pos != len(cleaned):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 12h, 7d, 2w, 1d12h)")
    return total


def _can_ask() -> bool:
    """Is there a person to confirm with? (Scripts pass --yes.)"""
    return sys.stdin.isatty()


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(n: int) -> str:
    if n < 1000:
        return f"{n:,} B"
    value, unit = n / 1000, "kB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:,.1f} {unit}"


def _default(path: Path | None) -> Path:
    from ratepilot.cache import default_cache_path

    return path if path is not None else default_cache_path()


@cache_app.command("stats")
def stats(
    cache_path: Annotated[Path | None, _CACHE_PATH] = None,
    as_json: bool = _JSON,
) -> None:
    """Entries, size on disk, hits and money saved (over every run that used the cache), per model."""
    from ratepilot.cache import cache_stats
    from ratepilot.errors import InputError

    try:
        found = cache_stats(_default(cache_path))
    except InputError as exc:
        raise fail(exc.message, ExitCode.BAD_INPUT) from None
    if as_json:
        print_json(found.to_dict())
        return
    if not found.exists:
        typer.echo(f"no response cache at {found.path} (nothing cached yet)")
        return
    models = ", ".join(f"{model} {n:,}" for model, n in found.models.items())
    rows = [
        ("response cache", found.path),
        ("entries", f"{found.entries:,}" + (f" ({models})" if models else "")),
        ("size on disk", f"{_size(found.size_bytes)} (response bodies {_size(found.body_bytes)})"),
        ("stored", f"{_when(found.oldest)} .. {_when(found.newest)}" if found.entries else "-"),
        (
            "hits",
            f"{found.hits:,}, saved ${found.saved_usd:,.6f}"
            + (f" (last {_when(found.last_hit)})" if found.hits else ""),
        ),
        ("what is cached", "see `ratepilot run --help` (--cache always|deterministic|never)"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label:<{width}}  {value}")


@cache_app.command("clear")
def clear(
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        metavar="DURATION",
        help="Delete only entries stored longer ago than this (90s, 30m, 12h, 7d, 2w, 1d12h); the hit counters "
        "are kept. Without it every entry goes, and the counters with them.",
        show_default=False,
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (needed without a terminal)."),
    cache_path: Annotated[Path | None, _CACHE_PATH] = None,
    as_json: bool = _JSON,
) -> None:
    """Delete cached answers (all, or those older than --older-than) and give the space back to the disk.

    The next run asks those requests again (and pays for them).
    """
    from ratepilot.cache import ResponseCache
    from ratepilot.errors import InputError

    try:
        seconds = None if older_than is None else parse_duration(older_than)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    path = _default(cache_path)
    if not path.exists():
        if as_json:
            print_json({"path": str(path), "deleted": 0, "entries": 0, "size_bytes": 0})
        else:
            typer.echo(f"no response cache at {path}: nothing to clear")
        return
    try:
        cache = ResponseCache(path)
    except InputError as exc:
        raise fail(exc.message, ExitCode.BAD_INPUT) from None
    with cache:
        doomed = cache.count(older_than_s=seconds)
        what = f"{doomed:,} cached answer(s)" + (f" stored more than {older_than} ago" if older_than else "")
        if doomed and not yes:
            if not _can_ask():
                raise fail(f"not deleting {what} from {path} without --yes (no terminal to ask on)", ExitCode.BAD_INPUT)
            if not typer.confirm(f"Delete {what} from {path}?", err=True):
                typer.echo("nothing deleted", err=True)
                doomed = 0
        deleted = cache.clear(older_than_s=seconds) if doomed else 0
        after = cache.stats()
    if as_json:
        print_json({"path": str(path), "deleted": deleted, "entries": after.entries, "size_bytes": after.size_bytes})
    else:
        typer.echo(f"deleted {deleted:,} cached answer(s); {after.entries:,} left, {_size(after.size_bytes)} on disk")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
