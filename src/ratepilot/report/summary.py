"""A job's figures in words: the rows the HTML report's table and the terminal summary both show."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table

from ..figures import by_code, duration, money
from .data import JobView, percentiles

__all__ = ["by_code_of", "state", "state_code", "summary_rows", "summary_table"]


def by_code_of(view: JobView, limit: int = 5) -> str:
    """ "3 x 404 model_not_found, 1 x request_too_large": the most frequent first."""
    return by_code({g.code: g.count for g in view.failures.values()}, limit)


def state_code(view: JobView) -> str:
    """``running``; ``done``; ``stopped`` (the last run stopped early: quota, budget, Ctrl-C...); ``incomplete``
    (requests left without a result: rerun); ``ended`` (the requests file is gone, so the total is unknown, and the
    last run ended without being stopped)."""
    if view.running:
        return "running"
    if view.total is not None and view.done >= view.total:
        return "done"
    if view.stop:
        return "stopped"
    return "ended" if view.total is None and view.segments and len(view.ends) == len(view.segments) else "incomplete"


def state(view: JobView) -> str:
    """The state in words, with what to do about it."""
    code = state_code(view)
    if code == "running":
        return f"running (pid {view.running_pid})"
    if code == "stopped":
        return f"stopped ({view.stop}): rerun the same command to resume"
    if code == "incomplete":
        return "incomplete: rerun the same command to resume"
    if code == "ended":
        return "ended (the requests file is gone: the total is unknown)"
    return code


def summary_rows(view: JobView) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("results", str(view.results))]
    if view.requests_file:
        rows.append(("requests", view.requests_file))
    rows.append(("state", state(view)))
    total = f" of {view.total:,}" if view.total is not None else ""
    share = f" ({100 * view.done / view.total:.1f}%)" if view.total else ""
    rows.append(("done", f"{view.done:,}{total}{share}"))
    rows.append(
        ("answers", f"{view.succeeded:,} ok, {view.http_errors:,} HTTP errors, {view.error_lines:,} without an answer")
    )
    if view.failures:
        rows.append(("failures", by_code_of(view)))
    if view.segments:
        modes = ", ".join(view.modes)
        rows.append(("runs", f"{len(view.segments)} ({modes})"))
    if view.first_at is not None and view.last_at is not None:
        start = datetime.fromtimestamp(view.first_at).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(("time", f"{start}, {duration(view.last_at - view.first_at)} from first to last answer"))
    rows.append(("tokens", f"{view.prompt_tokens:,} in, {view.completion_tokens:,} out"))
    costs = sorted(view.cost_by_model.items(), key=lambda kv: -kv[1])
    per_model = "; ".join(f"{m or '(unknown)'} {money(c)}" for m, c in costs) if len(costs) > 1 else ""
    rows.append(("cost", money(view.cost_usd) + (f" ({per_model})" if per_model else "")))
    models = view.models
    for model in models[:3]:  # limits are per model: so is the pace read against them
        name = f" ({model})" if len(models) > 1 else ""
        sustained = view.sustained(model)
        if sustained is not None:
            _, rpm, tpm, span, after_burst = sustained
            text = f"{rpm:,.0f} requests/min, {tpm:,.0f} tokens/min over {duration(span)} of the last run, " + (
                "once its opening burst was spent" if after_burst else "(no opening burst to leave out)"
            )
            rows.append((f"sustained rate{name}", text))
        limits = view.latest_limits(model)
        if limits is not None:
            parts = []
            if limits.requests:
                parts.append(f"{limits.requests[0]:,} requests/min")
            if limits.tokens:
                parts.append(f"{limits.tokens[0]:,} tokens/min")
            rows.append((f"limits{name}", ", ".join(parts) + " (last stated)"))
    if view.has_trace:
        rows.append(("429s, retries", f"{view.rate_limited:,} 429s, {view.retries:,} retries"))
    if len(view.latencies):
        p50, p90, p99 = percentiles(view.latencies, 0.5, 0.9, 0.99)
        (http,) = percentiles([d - w for d, w in zip(view.latencies, view.waits, strict=True)], 0.5)
        rows.append(
            (
                "latency",
                f"p50 {p50:.2f} s, p90 {p90:.2f} s, p99 {p99:.2f} s from issued to answered, waits for the limiter "
                f"included (the HTTP exchange alone: p50 {http:.2f} s)",
            )
        )
    if view.cache_hits:
        rows.append(("cache hits", f"{view.cache_hits:,}"))
    if not view.has_trace:
        rows.append(("trace", "none (no timing): ratepilot run writes one next to its results; a batch job has none"))
    return rows


def summary_table(view: JobView, report: str | None = None) -> Table:
    """The terminal summary: the same rows as the HTML report's table (and where the report is)."""
    table = Table(title="ratepilot report", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in summary_rows(view):
        table.add_row(name, value)
    if report is not None:
        table.add_row("report", report)
    return table
