"""`ratepilot status RESULTS.jsonl`: where a `run` job stands, from its local files (no API key, no request).

Done/total, cost so far, failures by code, the rate, and an ETA while a run is writing the file
(:func:`ratepilot.report.job_status`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ratepilot.exitcodes import ExitCode

__all__ = ["register"]

_HELP = (
    "Show a job's progress from its results file, trace and lock: done/total, cost so far, failures by code, the "
    "rate, and the ETA while a run is writing it. Reads local files only: no API key needed. Exit codes: 0 done, "
    "6 not finished (running or to be resumed), 10 done but some results are errors, 2 no such results file."
)


def status(
    results: Annotated[Path, typer.Argument(help="The results JSONL of a ratepilot run (or batch) job.")],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    from rich.console import Console

    from ratepilot.report import job_status

    from ._output import print_json
    from .report import load_or_fail

    view = load_or_fail(results)
    data = job_status(view)
    code = _exit_code(data)
    if as_json:
        print_json(data)
    else:
        Console().print(_table(data))
    raise typer.Exit(code)


def _exit_code(data: dict[str, Any]) -> int:
    if data["state"] != "done":
        return ExitCode.INCOMPLETE
    return ExitCode.HTTP_ERRORS if data["failures_by_code"] else ExitCode.OK


def _table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    from ratepilot.figures import by_code, duration, money

    table = Table(title=f"ratepilot status: {data['results']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    state = data["state"] + (f" (pid {data['running_pid']})" if data["running_pid"] else "")
    if data["stop"] and data["state"] == "stopped":
        state += f": {data['stop']}; rerun the same command to resume"
    elif data["state"] == "incomplete":
        state += ": rerun the same command to resume"
    table.add_row("state", state)
    total = data["total"]
    share = f" ({100 * data['done'] / total:.1f}%)" if total else ""
    table.add_row("done", f"{data['done']:,}" + (f" of {total:,}{share}" if total is not None else ""))
    table.add_row(
        "answers",
        f"{data['succeeded']:,} ok, {data['http_errors']:,} HTTP errors, {data['error_lines']:,} without an answer",
    )
    failures = data["failures_by_code"]
    if failures:
        table.add_row("failures", by_code(failures))
    table.add_row("cost so far", money(data["cost_usd"]))
    rate = data["rate"]
    limits = data["limits"]
    if rate:
        rpm = f"{rate['requests_per_min']:,.0f} requests/min"
        if limits["requests_per_min"]:
            rpm += f" (limit {limits['requests_per_min']:,})"
        where = (
            "until now"
            if data["state"] == "running"
            else "of the last run, once its opening burst was spent"
            if rate.get("after_burst")
            else "of the last run (no opening burst to leave out)"
        )
        table.add_row(
            "rate", f"{rpm}, {rate['tokens_per_min']:,.0f} tokens/min over {duration(rate['window_s'])} {where}"
        )
    if data["state"] == "running":
        eta = rate and rate.get("eta_s")
        table.add_row("ETA", duration(eta) if eta is not None else "- (no answer lately)")
    if data["has_trace"]:
        table.add_row("429s, retries", f"{data['rate_limited']:,} 429s, {data['retries']:,} retries")
    return table


def register(app: typer.Typer) -> None:
    app.command("status", help=_HELP)(status)
