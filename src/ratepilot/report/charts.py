"""The report's charts, drawn by plotly from a :class:`~.data.JobView`.

Plotly (``plotly.graph_objects``) because it is well kept and widely used, draws interactive charts (zoom into the
opening burst, hover for a bin's figures) in a browser with nothing to install, and its JavaScript can be inlined
(``include_plotlyjs=True``), so a report is one self-contained file that works offline and can be mailed or
archived. The data are aggregated here first (per-time bins, latency histograms), so a report of a million requests
stays a few megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]

from .data import JobView, percentiles

__all__ = ["Chart", "build_charts", "histogram"]

LIMIT_COLOR = "#d62728"
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
MAX_MODELS = len(PALETTE)
HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class Chart:
    """One section of the report: a title, a figure (None: nothing to draw) and a line saying what it shows."""

    key: str
    title: str
    figure: Any
    note: str


def histogram(values: Any, top: float, bins: int = HISTOGRAM_BINS) -> tuple[list[float], list[int]]:
    """Counts of ``values`` in ``bins`` equal bins over [0, top] (the last bin also counts everything above)."""
    width = top / bins if top > 0 else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v / width)))] += 1
    return [width * (i + 0.5) for i in range(bins)], counts


def _times(starts: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t) for t in starts]


def _layout(fig: Any, *, y: str, height: int = 360) -> Any:
    fig.update_layout(
        height=height,
        margin={"l": 60, "r": 20, "t": 30, "b": 40},
        yaxis_title=y,
        legend={"orientation": "h", "y": 1.12},
        hovermode="x unified",
        template="plotly_white",
    )
    return fig


def _limit_steps(view: JobView, dimension: str, model: str | None) -> tuple[list[datetime], list[float]]:
    """The per-second equivalent of a per-minute limit the server stated for ``model``, over time (a step line)."""
    xs: list[datetime] = []
    ys: list[float] = []
    for snap in view.limits:
        dim = snap.requests if dimension == "requests" else snap.tokens
        if dim is None or (model is not None and snap.model != model):
            continue
        xs.append(datetime.fromtimestamp(snap.at))
        ys.append(dim[0] / 60.0)
    if xs and view.last_at is not None and datetime.fromtimestamp(view.last_at) > xs[-1]:
        xs.append(datetime.fromtimestamp(view.last_at))  # carry the last limit to the end of the job
        ys.append(ys[-1])
    return xs, ys


def _rate_chart(view: JobView, dimension: str) -> Chart:
    series = view.series()
    key = f"{dimension}-rate"
    unit = "requests" if dimension == "requests" else "tokens"
    title = f"{unit.capitalize()} per second, against the limit"
    if not series.starts:
        return Chart(key, title, None, "No timed requests in the trace.")
    x = _times(series.starts)
    models = view.models
    # Limits are per model: a job of several models gets a line per model, each against its own limit.
    lines: list[tuple[str | None, list[float]]]
    if len(models) > 1:
        lines = []
        for name in models[:MAX_MODELS]:
            requests, tokens = view.model_rates(name, series.starts, series.bin_s)
            lines.append((name, requests if dimension == "requests" else tokens))
    else:
        counts = series.requests if dimension == "requests" else series.tokens
        lines = [(models[0] if models else None, [c / series.bin_s for c in counts])]
    fig = go.Figure()
    limits: list[float] = []
    peak = 0.0
    for i, (model, rates) in enumerate(lines):
        color = PALETTE[i % len(PALETTE)]
        prefix = f"{model}: " if len(lines) > 1 else ""
        fig.add_trace(
            go.Scatter(
                x=x,
                y=rates,
                name=f"{prefix}{unit}/s (answered, per {series.bin_s:g} s)",
                mode="lines",
                line={"shape": "hv", "width": 1.5, "color": color},
                fill="tozeroy" if len(lines) == 1 else None,
            )
        )
        peak = max(peak, *rates)
        xs, ys = _limit_steps(view, dimension, model)
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=f"{prefix}limit ({unit}/min ÷ 60)",
                    mode="lines",
                    line={"shape": "hv", "dash": "dash", "color": LIMIT_COLOR if len(lines) == 1 else color},
                )
            )
            limits.append(max(ys))
    if limits:
        _clip_burst(fig, peak, max(limits), unit)
    note = (
        f"Answered {unit} per second, in {series.bin_s:g}-second bins, and the per-minute limit the server stated "
        "(x-ratelimit-limit-*), divided by 60. A job's first minute of capacity may go out at once: a spike above "
        "the line at the start is that burst, not a violation."
    )
    if len(lines) > 1:
        note += " Each model has its own limits: one line per model."
    if not limits:
        note += " The trace holds no limits (the server sent no rate-limit headers, or a batch job)."
    return Chart(key, title, _layout(fig, y=f"{unit}/s"), note)


def _clip_burst(fig: Any, peak: float, limit: float, unit: str) -> None:
    """Scale the y axis to the limit when an opening burst would flatten everything else into the floor; say so on
    the chart (zooming out, or a double click, shows all of it)."""
    top = 2.5 * limit
    if limit <= 0 or peak <= 2 * top:
        return
    fig.update_yaxes(range=[0, top])
    fig.add_annotation(
        x=1,
        y=1,
        xref="paper",
        yref="paper",
        xanchor="right",
        showarrow=False,
        text=f"peak {peak:,.0f} {unit}/s (the opening burst) is off the scale: zoom out to see it",
        font={"color": "#555", "size": 11},
    )


def _refusals_chart(view: JobView) -> Chart:
    series = view.series()
    title = "429s, retries and errors over time"
    if not series.starts:
        return Chart("refusals", title, None, "No timed requests in the trace.")
    x = _times(series.starts)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=series.rate_limited, name="429s (rate-limit refusals)", marker_color=LIMIT_COLOR))
    fig.add_trace(go.Bar(x=x, y=series.retries, name="retries (attempts beyond the first)", marker_color="#ff7f0e"))
    fig.add_trace(go.Bar(x=x, y=series.errors, name="requests ended in an error", marker_color="#7f7f7f"))
    fig.update_layout(barmode="group", yaxis={"rangemode": "tozero"})
    note = (
        f"Per {series.bin_s:g}-second bin: 429s the client received ({view.rate_limited:,} in all), retries of the "
        f"requests that ended in the bin ({view.retries:,} in all), and requests whose final answer was an error."
    )
    return Chart("refusals", title, _layout(fig, y=f"per {series.bin_s:g} s"), note)


def _latency_chart(view: JobView) -> Chart:
    title = "Latency"
    if not len(view.latencies):
        return Chart("latency", title, None, "No latencies: the trace has no online requests (a batch job).")
    total = view.latencies
    http = [max(0.0, d - w) for d, w in zip(view.latencies, view.waits, strict=True)]
    p50, p90, p99 = percentiles(total, 0.5, 0.9, 0.99)
    top = max(p99, 1e-3)
    fig = go.Figure()
    for name, values, color in (
        ("issued → answered (waits included)", total, "#1f77b4"),
        ("without the waits (the HTTP exchange)", http, "#2ca02c"),
    ):
        centers, counts = histogram(values, top)
        fig.add_trace(go.Bar(x=centers, y=counts, name=name, marker_color=color, opacity=0.6))
    fig.update_layout(barmode="overlay", xaxis_title="seconds", bargap=0.02)
    (wait,) = percentiles(view.waits, 0.5)
    note = (
        f"{len(total):,} requests: p50 {p50:.2f} s, p90 {p90:.2f} s, p99 {p99:.2f} s from issued to answered "
        f"(waiting for the limiter and between retries included; p50 of the waits {wait:.2f} s). A request is "
        "issued ahead of its turn, so that the limiter is never starved: most of a busy job's latency is that wait. "
        "The last bin also counts everything slower."
    )
    return Chart("latency", title, _layout(fig, y="requests"), note)


def _cost_chart(view: JobView) -> Chart:
    title = "Cost over time and by model"
    series = view.series()
    fig = go.Figure()
    if series.starts and any(series.cost):
        running = 0.0
        cumulative = []
        for c in series.cost:
            running += c
            cumulative.append(running)
        fig.add_trace(go.Scatter(x=_times(series.starts), y=cumulative, name="cost so far (USD)", mode="lines"))
    models = sorted(view.cost_by_model.items(), key=lambda kv: -kv[1])
    if models:
        fig.add_trace(
            go.Bar(
                x=[round(v, 6) for _, v in models],
                y=[m or "(unknown)" for m, _ in models],
                orientation="h",
                name="by model (USD)",
                xaxis="x2",
                yaxis="y2",
                marker_color="#9467bd",
            )
        )
        fig.update_layout(
            xaxis={"domain": [0.0, 0.58]},
            xaxis2={"domain": [0.7, 1.0], "anchor": "y2", "title": "USD"},
            yaxis2={"anchor": "x2", "automargin": True},
        )
    if not fig.data:
        return Chart("cost", title, None, "No usage reported: nothing to price.")
    source = "the trace (Batch answers at half price, cache hits free)" if view.cost_from == "trace" else "the results"
    note = f"${view.cost_usd:,.6f} in all, priced from {source} at the default price table."
    return Chart("cost", title, _layout(fig, y="USD"), note)


def _failures_chart(view: JobView) -> Chart:
    title = "Failures by code"
    groups = sorted(view.failures.values(), key=lambda g: -g.count)
    if not groups:
        return Chart("failures", title, None, "Every result is a success.")
    fig = go.Figure(
        go.Bar(
            x=[g.count for g in groups],
            y=[g.code for g in groups],
            orientation="h",
            marker_color=LIMIT_COLOR,
            name="results",
        )
    )
    fig.update_layout(yaxis={"autorange": "reversed", "automargin": True}, xaxis_title="results")
    note = f"{sum(g.count for g in groups):,} results are errors; examples below (messages shortened, keys redacted)."
    return Chart("failures", title, _layout(fig, y="", height=max(220, 60 + 40 * len(groups))), note)


def build_charts(view: JobView) -> list[Chart]:
    """Every chart of the report, in reading order."""
    return [
        _rate_chart(view, "requests"),
        _rate_chart(view, "tokens"),
        _refusals_chart(view),
        _latency_chart(view),
        _cost_chart(view),
        _failures_chart(view),
    ]
