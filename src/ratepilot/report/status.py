"""``ratepilot status``: where a job stands — done/total, cost so far, failures by code, rate and ETA if running.

From the job's local files only (:func:`~.data.load_job`): no API key, no request. The rate of a running job is the
live bar's (:class:`~ratepilot.run.progress.PaceMeter`) fed from the trace's last minute, ending now, so a job that
stalled reads as stalled; the ETA is the bar's too (the sustained rate, capped by the limits last stated).
"""

from __future__ import annotations

from typing import Any

from ..clock import Clock, SystemClock
from ..run.progress import MAX_WINDOW_S, PaceMeter
from .data import JobView
from .summary import state_code

__all__ = ["job_status"]


def _live_pace(view: JobView, now: float) -> dict[str, Any]:
    """Rates over the last 10-60 s ending ``now`` (unix seconds) and the ETA for the requests left."""
    meter = PaceMeter()
    since = int(now - MAX_WINDOW_S) - 1
    done = tokens = retries = refused = 0
    meter.add(float(since), 0)
    for second in sorted(k for k in view.per_second if k >= since):
        b = view.per_second[second]
        done, tokens = done + b.requests, tokens + b.tokens
        retries, refused = retries + b.retries, refused + b.rate_limited
        meter.add(second + 1.0, done, tokens, retries, refused)  # a bin's answers are in by its end
    limits = view.latest_limits()  # None for a job of several models: each has its own, none is the job's
    remaining = max(0, (view.total or view.done) - view.done)
    pace = meter.pace(
        max(now, since + 1.0),
        remaining=remaining,
        requests_limit=limits.requests[0] if limits and limits.requests else None,
        tokens_limit=limits.tokens[0] if limits and limits.tokens else None,
    )
    return {
        "window_s": round(pace.window_s, 1),
        "requests_per_min": round(pace.requests_per_min, 1),
        "tokens_per_min": round(pace.tokens_per_min, 1),
        "retries_per_min": round(pace.retries_per_min, 2),
        "rate_limited_per_min": round(pace.rate_limited_per_min, 2),
        "eta_s": round(pace.eta_s, 1) if pace.eta_s is not None else None,
        "eta_bound": pace.bound,
    }


def job_status(view: JobView, *, clock: Clock | None = None) -> dict[str, Any]:
    """The job's status as plain data (what ``ratepilot status --json`` prints)."""
    limits = view.latest_limits()
    out: dict[str, Any] = {
        "results": str(view.results),
        "requests": view.requests_file,
        "state": state_code(view),
        "running_pid": view.running_pid,
        "stop": view.stop,
        "done": view.done,
        "total": view.total,
        "succeeded": view.succeeded,
        "http_errors": view.http_errors,
        "error_lines": view.error_lines,
        "failures_by_code": {g.code: g.count for g in sorted(view.failures.values(), key=lambda g: -g.count)},
        "prompt_tokens": view.prompt_tokens,
        "completion_tokens": view.completion_tokens,
        "cost_usd": round(view.cost_usd, 6),
        "cost_from": view.cost_from,
        "runs": len(view.segments),
        "modes": view.modes,
        "retries": view.retries,
        "rate_limited": view.rate_limited,
        "last_answer_at": round(view.last_at, 3) if view.last_at is not None else None,
        "limits": {
            "requests_per_min": limits.requests[0] if limits and limits.requests else None,
            "tokens_per_min": limits.tokens[0] if limits and limits.tokens else None,
        },
        "rate": None,
        "has_trace": view.has_trace,
    }
    if view.running:
        out["rate"] = _live_pace(view, (clock or SystemClock()).wall())
    else:
        sustained = view.sustained()
        if sustained is not None:
            out["rate"] = {
                "model": sustained.model,
                "window_s": round(sustained.span_s, 1),
                "requests_per_min": round(sustained.requests_per_min, 1),
                "tokens_per_min": round(sustained.tokens_per_min, 1),
                "after_burst": sustained.after_burst,
                "eta_s": None,
            }
    return out
