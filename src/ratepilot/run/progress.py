"""What a person sees: a live bar while the job runs, and a summary table at the end (rich).

The bar's figures are measured, not averaged since the start: rates over a sliding window (the last 10 s, widened
up to 60 s until it holds enough answers to be steady) shown next to the limits the server stated, and an ETA from
the rate the job can *sustain* — the measured one, but never more than the limits allow. A job's first minute of
capacity goes out at once (the server's bucket starts full), so over the first window the measured rate may read
far above the per-minute limit: the bar says "burst" then, and the ETA still counts at the limit, since the burst
cannot repeat. Retries and 429s are per minute over the same window.

Time is injected (:mod:`ratepilot.clock`): ``LiveProgress(clock=FakeClock())`` makes the figures testable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..clock import Clock, SystemClock
from ..figures import duration, money
from .job import RunSummary

__all__ = ["LiveProgress", "Pace", "PaceMeter", "summary_table"]

MIN_WINDOW_S = 10.0
MAX_WINDOW_S = 60.0
MIN_EVENTS = 20  # answers a window should hold for its rate to be steady (else it widens, up to MAX_WINDOW_S)
STALLED_AFTER = 5  # answers the recent rate promised over the short window, none came: stalled, not slow
SETTLE_S = 2.0  # no rate (and no ETA) from less than this much time: one group commit would read as a rate


@dataclass(frozen=True, slots=True)
class Pace:
    """Rates over the last ``window_s`` seconds (per minute, like the limits) and the ETA they give.

    ``window_s`` is 0 until there is enough time to measure (then every rate is 0 and ``eta_s`` None).
    ``bound`` says what the ETA's rate is: ``"requests limit"``, ``"tokens limit"`` or ``"measured"``.
    """

    window_s: float
    requests_per_min: float
    tokens_per_min: float
    retries_per_min: float
    rate_limited_per_min: float
    eta_s: float | None
    bound: str = "measured"


@dataclass(frozen=True, slots=True)
class _Sample:
    t: float
    done: int
    tokens: int
    retries: int
    rate_limited: int


class PaceMeter:
    """Sliding-window rates and an ETA, from samples of a job's cumulative counters. Pure: time is an argument."""

    def __init__(
        self,
        *,
        min_window_s: float = MIN_WINDOW_S,
        max_window_s: float = MAX_WINDOW_S,
        min_events: int = MIN_EVENTS,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.min_window_s = min_window_s
        self.max_window_s = max_window_s
        self.min_events = min_events
        self.settle_s = settle_s
        self._samples: deque[_Sample] = deque()

    def add(self, t: float, done: int, tokens: int = 0, retries: int = 0, rate_limited: int = 0) -> None:
        """The job's totals at time ``t`` (non-decreasing)."""
        self._samples.append(_Sample(t, done, tokens, retries, rate_limited))
        # Keep one sample at or before the widest window's start: the anchor a full window is measured from.
        while len(self._samples) > 2 and self._samples[1].t <= t - self.max_window_s:
            self._samples.popleft()

    def _anchor(self, now: float, window: float) -> _Sample:
        """The latest sample at or before ``now - window`` (the oldest one when the job is younger than that)."""
        anchor = self._samples[0]
        for s in self._samples:
            if s.t > now - window:
                break
            anchor = s
        return anchor

    def pace(
        self, now: float, *, remaining: int, requests_limit: float | None = None, tokens_limit: float | None = None
    ) -> Pace:
        """Rates up to ``now`` and the ETA for ``remaining`` requests, given the per-minute limits (if known)."""
        if not self._samples:
            return Pace(0.0, 0.0, 0.0, 0.0, 0.0, None)
        last = self._samples[-1]
        window = self.min_window_s
        anchor = recent = self._anchor(now, window)
        while last.done - anchor.done < self.min_events and window < self.max_window_s:
            window = min(self.max_window_s, window * 2)
            anchor = self._anchor(now, window)
        if anchor is not recent and last.done == recent.done and now - anchor.t > 0:
            # Nothing finished in the short window: a slow job, or a stalled one. Stalled when the wide window's
            # rate would have finished several in that time: then the short window's rate (0) is the truth.
            expected = (last.done - anchor.done) / (now - anchor.t) * (now - recent.t)
            if expected >= STALLED_AFTER:
                anchor = recent
        span = now - anchor.t
        if span < self.settle_s:
            return Pace(0.0, 0.0, 0.0, 0.0, 0.0, 0.0 if remaining <= 0 else None)
        per_min = 60.0 / span
        done = last.done - anchor.done
        tokens = last.tokens - anchor.tokens
        rpm, tpm = done * per_min, tokens * per_min
        retries = (last.retries - anchor.retries) * per_min
        refused = (last.rate_limited - anchor.rate_limited) * per_min
        eta, bound = self._eta(remaining, rpm, tpm, done, tokens, last, requests_limit, tokens_limit)
        return Pace(span, rpm, tpm, retries, refused, eta, bound)

    @staticmethod
    def _eta(
        remaining: int,
        rpm: float,
        tpm: float,
        done: int,
        tokens: int,
        last: _Sample,
        requests_limit: float | None,
        tokens_limit: float | None,
    ) -> tuple[float | None, str]:
        """Remaining work over the sustained rate: the measured requests per minute, capped by the requests limit
        and by the tokens limit (over the tokens a request takes): the rate the job can keep up from here on."""
        if remaining <= 0:
            return 0.0, "measured"
        candidates = [(rpm, "measured")]
        if requests_limit:
            candidates.append((float(requests_limit), "requests limit"))
        per_request = tokens / done if done else (last.tokens / last.done if last.done else 0.0)
        if tokens_limit and per_request > 0:
            candidates.append((tokens_limit / per_request, "tokens limit"))
        sustained, bound = min(candidates, key=lambda c: c[0])
        if sustained <= 0:
            return None, "measured"  # nothing finished within the window: stalled, no honest ETA
        return remaining * 60.0 / sustained, bound


def _limit(summary: RunSummary, name: str) -> float | None:
    value = summary.limits.get(name, {}).get("limit")
    return float(value) if value else None


class LiveProgress:
    """Pass :meth:`update` as ``on_progress``; use as a context manager around the run.

    On Ctrl-C (``KeyboardInterrupt`` leaving the block) it says how many results are saved and that a rerun resumes.
    """

    def __init__(self, console: Console | None = None, *, clock: Clock | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.clock: Clock = clock or SystemClock()
        self.meter = PaceMeter()
        self._summary: RunSummary | None = None
        self._live = Live(console=self.console, refresh_per_second=4, transient=False, get_renderable=self._render)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: Any) -> None:
        self._live.__exit__(exc_type, *rest)
        s = self._summary
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and s is not None:
            self.console.print(
                f"[yellow]{s.done:,} of {s.total:,} saved in {s.results_file}; rerun the same command to resume[/]",
                highlight=False,
            )

    def update(self, summary: RunSummary) -> None:
        self._summary = summary
        # Rates count answers as they arrive (``done`` counts them once fsynced, a group commit later).
        settled = summary.answered + summary.error_lines + summary.cache_hits
        tokens = summary.prompt_tokens + summary.completion_tokens
        self.meter.add(self.clock.now(), settled, tokens, summary.retries, summary.rate_limited)

    def pace(self) -> Pace:
        """The figures the bar shows now."""
        s = self._summary
        if s is None:
            return Pace(0.0, 0.0, 0.0, 0.0, 0.0, None)
        # Work left: what has no answer yet (``done`` lags the answers by a group commit).
        answered = s.already_done + s.answered + s.error_lines + s.cache_hits
        return self.meter.pace(
            self.clock.now(),
            remaining=max(0, s.total - max(s.done, answered)),
            requests_limit=_limit(s, "requests"),
            tokens_limit=_limit(s, "tokens"),
        )

    def _render(self) -> Any:
        s = self._summary
        if s is None:
            return Text("ratepilot run: validating...", style="dim")
        p = self.pace()
        bar = ProgressBar(total=max(1, s.total), completed=s.done, width=40)
        eta = duration(p.eta_s)
        if p.eta_s and p.bound != "measured":
            eta += f" (at the {p.bound})"
        line1 = Text.assemble(
            (f" {s.done:,}/{s.total:,}", "bold"),
            f"  {s.done * 100 / max(1, s.total):5.1f}%  ETA {eta}  [{s.mode}]",
        )
        return Group(
            bar,
            line1,
            Text(rates_line(p, _limit(s, "requests"), _limit(s, "tokens")), style="cyan"),
            Text(
                f" retries {p.retries_per_min:,.1f}/min   429s {p.rate_limited_per_min:,.1f}/min"
                f" ({s.rate_limited:,} in all)   cost {money(s.cost_usd)}"
                + (f"   cache hits {s.cache_hits:,}" if s.cache_hits else ""),
                style="cyan",
            ),
        )


def rates_line(p: Pace, requests_limit: float | None, tokens_limit: float | None) -> str:
    """ "req/min 198 / 200   tok/min 5,940 / 400,000   (last 12s)": measured rates next to the limits."""

    def one(name: str, rate: float, limit: float | None) -> str:
        text = f"{name} {rate:,.0f}" if p.window_s else f"{name} -"
        if limit:
            text += f" / {limit:,.0f}"
            if p.window_s and rate > limit * 1.25:
                text += " burst"  # the bucket's stored capacity going out at once: allowed, and not sustained
        return text

    window = f"(last {duration(p.window_s)})" if p.window_s else "(measuring)"
    requests, tokens = (
        one("req/min", p.requests_per_min, requests_limit),
        one("tok/min", p.tokens_per_min, tokens_limit),
    )
    return f" {requests}   {tokens}   {window}"


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
    table.add_row("cache", f"{s.cache_hits:,} hits, saved {money(s.saved_usd)}")
    table.add_row("tokens", f"{s.prompt_tokens:,} in, {s.completion_tokens:,} out")
    table.add_row("cost", money(s.cost_usd))
    if s.lanes:
        lanes = s.lanes
        table.add_row(
            "tiers",
            f"{int(lanes['flex']):,} flex, {int(lanes['standard']):,} standard "
            f"({int(lanes['fell_back']):,} after flex stayed unavailable), {int(lanes['priority']):,} priority; "
            f"saved {money(lanes['saved_usd'])} against all-standard",
        )
    table.add_row("HTTP", f"{s.http_requests:,} requests, {s.retries:,} retries, {s.rate_limited:,} 429s")
    if s.limits:
        table.add_row("limits", ", ".join(f"{k} {v['limit']:,}/min" for k, v in s.limits.items()))
    # No average rate here: over a short job it counts the opening burst (the first minute's capacity, sent at
    # once) and reads as a multiple of the limit. The report charts the rate over time against the limits.
    table.add_row("time", duration(s.elapsed_s))
    if s.answered:
        table.add_row("charts", f"ratepilot report {s.results_file}")
    if s.stop:
        table.add_row("stopped", Text(s.stop, style="bold red"))
    if s.message:
        table.add_row("next", s.message)
    table.add_row("exit code", str(s.exit_code))
    return table
