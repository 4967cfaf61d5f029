"""The ``ratepilot`` command line: thin typer commands that parse, call the library, and print.

Each command lives in its own module and registers itself here, so commands stay independent and the
CLI starts fast (heavy imports happen inside the command functions).
"""

from __future__ import annotations

import typer

from . import _output, batch, cache, demo, limits, report, run, sim, status, webhooks

__all__ = ["app", "main"]

app = typer.Typer(
    name="ratepilot",
    help="Run OpenAI API workloads at the edge of your rate limits, offline-testable with a built-in simulator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals could hold an API key
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from ratepilot import __version__

        typer.echo(f"ratepilot {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)


for _module in (run, batch, sim, limits, webhooks, demo, cache, report, status):
    _module.register(app)

# After every command is registered: --json covers every outcome of every command that has it (errors too).
_output.install(app)


def main() -> None:
    app()
