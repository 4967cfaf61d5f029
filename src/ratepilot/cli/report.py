"""`ratepilot report RESULTS.jsonl`: a self-contained HTML report with charts, and a summary in the terminal.

Reads the job's local files only (results, marker, trace, lock: :func:`ratepilot.report.load_job`); no API key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ratepilot.exitcodes import ExitCode

if TYPE_CHECKING:
    from ratepilot.report import JobView

__all__ = ["register"]

_HELP = (
    "Write an HTML report of a job (ratepilot run or batch results) with charts: requests/s and tokens/s against "
    "the limits the server stated, 429s and retries over time, latency, cost over time and by model, failures by "
    "code with examples; and print a summary. One self-contained file: it opens offline. No API key needed."
)


def report(
    results: Annotated[Path, typer.Argument(help="The results JSONL of a ratepilot run or batch job.")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write the HTML (default: RESULTS.report.html next to it)."),
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print the job's figures and the report's path as JSON."),
) -> None:
    from rich.console import Console

    from ratepilot.report import job_status, summary_table, write_report

    from ._output import fail, print_json

    view = load_or_fail(results)
    try:
        path = write_report(view, output)
    except OSError as exc:
        raise fail(f"cannot write the report: {exc}", ExitCode.UNEXPECTED) from None
    if as_json:
        print_json({**job_status(view), "report": str(path)})
        return
    console = Console()
    console.print(summary_table(view))
    console.print(f"report written: {path}", soft_wrap=True, highlight=False, markup=False)  # whole, to copy


def register(app: typer.Typer) -> None:
    app.command("report", help=_HELP)(report)


def load_or_fail(results: Path) -> JobView:
    """The job of ``results`` (:func:`ratepilot.report.load_job`), or exit 2 naming what is wrong with the file."""
    from ratepilot.report import load_job
    from ratepilot.results import ForeignResultsError

    from ._output import fail

    try:
        return load_job(results)
    except FileNotFoundError:
        raise fail(f"{results}: no such results file", ExitCode.BAD_INPUT) from None
    except ForeignResultsError as exc:
        raise fail(str(exc), ExitCode.BAD_INPUT) from None
