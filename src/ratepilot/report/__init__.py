"""``ratepilot report`` and ``ratepilot status``: what a job did and where it stands, from its local files.

:func:`load_job` reads a results file with its marker, trace (:mod:`ratepilot.trace`) and lock into a
:class:`JobView`; :func:`write_report` draws it as one self-contained HTML file (plotly, inlined); :func:`job_status`
is the status as plain data. Nothing here needs an API key or sends a request. The HTML modules import plotly,
so they are loaded on first use: ``ratepilot status`` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .data import FailureGroup, JobView, Series, load_job
from .status import job_status
from .summary import summary_rows, summary_table

if TYPE_CHECKING:
    from .html import default_report_path, render_html, write_report

__all__ = [
    "FailureGroup",
    "JobView",
    "Series",
    "default_report_path",
    "job_status",
    "load_job",
    "render_html",
    "summary_rows",
    "summary_table",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in ("default_report_path", "render_html", "write_report"):
        from . import html

        return getattr(html, name)
    raise AttributeError(name)
