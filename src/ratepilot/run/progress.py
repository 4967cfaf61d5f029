"""What a person sees: a live bar while the job runs, and a summary table at the end (rich)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .job import RunSummary

__all__ = ["LiveProgress", "summary_table"]


def _money(usd: float) -> str:
    return f"${usd:,.4f}" if usd < 10 else f"${usd:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LiveProgress:
    """Pass :meth:`update` as ``on_progress``; use as a context manager around the run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._summary: RunSummary | None = None
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, done, tokens) over the last minute
        self._live = Live(console=self.console, refresh_per_second=4, transient=False, get_renderable=self._render)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def update(self, summary: RunSummary) -> None:
        now = time.monotonic()
        self._summary = summary
        self._samples.append((now, summary.done, summary.prompt_tokens + summary.completion_tokens))
        while len(self._samples) > 2 and now - self._samples[0][0] > 60:
            self._samples.popleft()

    def _rates(self) -> tuple[float, float]:
        """Requests and tokens per minute over the last minute (or since the start)."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, d0, k0), (t1, d1, k1) = self._samples[0], self._samples[-1]
        span = max(t1 - t0, 1e-6)
        return (d1 - d0) * 60 / span, (k1 - k0) * 60 / span

    def _render(self) -> Any:
        s = self._summary
        if s is None:
            return Text("ratepilot run: validating...", style="dim")
        rpm, tpm = self._rates()
        remaining = s.total - s.done
        eta = remaining / (rpm / 60) if rpm > 0 else None
        req_limit = s.limits.get("requests", {}).get("limit")
        tok_limit = s.limits.get("tokens", {}).get("limit")
        bar = ProgressBar(total=max(1, s.total), completed=s.done, width=40)
        line1 = Text.assemble(
            (f" {s.done:,}/{s.total:,}", "bold"),
            f"  {s.done * 100 / max(1, s.total):5.1f}%  ETA {_duration(eta)}  [{s.mode}]",
        )
        line2 = Text(
            f"req/min {rpm:,.0f}"
            + (f" / {req_limit:,}" if req_limit else "")
            + f"   tok/min {tpm:,.0f}"
            + (f" / {tok_limit:,}" if tok_limit else "")
            + f"   retries {s.retries}   429s {s.rate_limited}   cost {_money(s.cost_usd)}"
            + (f"   cache hits {s.cache_hits:,}" if s.cache_hits else ""),
            style="cyan",
        )
        return Group(bar, line1, line2)


def summary_table(s: RunSummary) -> Table:
    table = Table(title="ratepilot run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", f"{s.requests_file} -> {s.results_file}")
    table.add_row("mode", f"{s.mode} ({s.mode_reason})")
    table.add_row(
        "results",
        f"{s.done:,} of {s.total:,} done" + (f" ({s.already_done:,} from earlier runs)" if s.already_done else ""),
    )
    table.add_row(
        "this run",
        f"{s.answered:,} answered: {s.succeeded:,} ok, {s.http_errors:,} HTTP errors; {s.error_lines:,} too large",
    )
    if s.invalid_skipped:
        table.add_row("invalid lines", f"{s.invalid_skipped:,} skipped (--skip-invalid)")
    if s.unfinished or s.not_started:
        table.add_row("left for a rerun", f"{s.unfinished:,} unanswered after retries, {s.not_started:,} not started")
    table.add_row("cache", f"{s.cache_hits:,} hits, saved {_money(s.saved_usd)}")
    table.add_row("tokens", f"{s.prompt_tokens:,} in, {s.completion_tokens:,} out")
    table.add_row("cost", _money(s.cost_usd))
    table.add_row("HTTP", f"{s.http_requests:,} requests, {s.retries:,} retries, {s.rate_limited:,} 429s")
    if s.limits:
        table.add_row("limits", ", ".join(f"{k} {v['limit']:,}/min" for k, v in s.limits.items()))
    rate = s.answered * 60 / s.elapsed_s if s.elapsed_s > 0 else 0.0
    table.add_row("time", f"{_duration(s.elapsed_s)} ({rate:,.0f} req/min)")
    if s.stop:
        table.add_row("stopped", Text(s.stop, style="bold red"))
    if s.message:
        table.add_row("next", s.message)
    table.add_row("exit code", str(s.exit_code))
    return table
