"""The report as one self-contained HTML file: a summary table, then the charts (plotly's JavaScript inlined once).

No request leaves the page: no CDN, no web font, no image. The file opens offline in any browser, and can be mailed
or archived with the results.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path

from .charts import Chart, build_charts
from .data import JobView
from .summary import summary_rows

__all__ = ["default_report_path", "render_html", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin: 2rem 0 .3rem; }
p.sub { color: #666; margin-top: 0; } p.note { color: #555; font-size: .9rem; margin: .2rem 0 .5rem; }
table { border-collapse: collapse; font-size: .92rem; }
td, th { padding: .25rem .8rem .25rem 0; text-align: left; vertical-align: top; border-bottom: 1px solid #eee; }
th { color: #555; font-weight: 600; } code { font-size: .88rem; }
section { border-top: 1px solid #ddd; }
"""


def default_report_path(results: str | os.PathLike[str]) -> Path:
    """``results.jsonl`` -> ``results.report.html`` next to it."""
    path = Path(results)
    return path.with_name(f"{path.stem or path.name}.report.html")


def _section(chart: Chart, first: bool) -> str:
    parts = [f'<section id="{chart.key}"><h2>{html.escape(chart.title)}</h2>']
    parts.append(f'<p class="note">{html.escape(chart.note)}</p>')
    if chart.figure is not None:
        parts.append(
            chart.figure.to_html(
                full_html=False,
                include_plotlyjs=first,  # inlined once, in the first chart: the page needs nothing else
                div_id=f"chart-{chart.key}",
                config={"displaylogo": False, "responsive": True},
            )
        )
    return "".join(parts)


def _failure_examples(view: JobView) -> str:
    groups = sorted(view.failures.values(), key=lambda g: -g.count)
    if not groups:
        return ""
    rows = [
        f"<tr><td><code>{html.escape(g.code)}</code></td><td>{g.count:,}</td><td><code>{html.escape(cid)}</code></td>"
        f"<td>{html.escape(message)}</td></tr>"
        for g in groups
        for cid, message in g.examples
    ]
    return (
        "<table><tr><th>code</th><th>results</th><th>example custom_id</th><th>message</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_html(view: JobView) -> str:
    charts = build_charts(view)
    summary = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>" for name, value in summary_rows(view)
    )
    sections: list[str] = []
    first = True
    for chart in charts:
        sections.append(_section(chart, first and chart.figure is not None))
        if chart.figure is not None:
            first = False
        if chart.key == "failures":
            sections.append(_failure_examples(view))
        sections.append("</section>")
    title = f"ratepilot report: {view.results.name}"
    made = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="sub">{html.escape(str(view.results))} · written {made} by <code>ratepilot report</code></p>'
        f"<table>{summary}</table>" + "".join(sections) + "</body></html>\n"
    )


def write_report(view: JobView, output: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of ``view`` to ``output`` (default: :func:`default_report_path`); return its path."""
    target = Path(output) if output is not None else default_report_path(view.results)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(render_html(view), encoding="utf-8")
    os.replace(tmp, target)  # a report being viewed is never half-written
    return target
