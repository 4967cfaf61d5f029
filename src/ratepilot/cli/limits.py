"""`ratepilot limits`: probe the API with one minimal request and show the live rate-limit state.

The probe goes through a Pilot-wrapped client, so it is classified like any other call (one HTTP request;
``insufficient_quota`` is reported, never retried). The key is read from ``--api-key`` or
``OPENAI_API_KEY`` and only ever shown redacted.
"""

from __future__ import annotations

import typer

from ratepilot.exitcodes import ExitCode

__all__ = ["LimitsExit", "register"]

LimitsExit = ExitCode
"""Kept for scripts that imported it: ``limits`` uses the shared exit codes (0, 2, 3, 7, 8)."""

_HELP = (
    "Probe the API with one minimal request and show limit / remaining / reset per dimension. "
    "Exit codes: 0 ok, 1 unexpected error, 2 no API key, 3 insufficient quota, 7 API key rejected, "
    "8 the API refused the probe or could not be reached."
)


def register(app: typer.Typer) -> None:
    app.command("limits", help=_HELP)(limits)


def limits(
    model: str = typer.Option("gpt-4o-mini", "--model", "-m", help="Model whose limits to probe."),
    base_url: str | None = typer.Option(
        None, "--base-url", envvar="OPENAI_BASE_URL", help="API base URL (e.g. a `ratepilot sim`'s /v1 URL)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="OPENAI_API_KEY", show_default=False, help="API key (default: $OPENAI_API_KEY)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Probe the API with one minimal request and show limit / remaining / reset per dimension."""
    import openai
    from rich.console import Console
    from rich.table import Table

    from ratepilot.cli.exits import classify_exit
    from ratepilot.client import Pilot
    from ratepilot.protocol.errors import redact_key
    from ratepilot.retry import RetryPolicy

    from ._output import fail, json_error, print_json

    err = Console(stderr=True)
    if not api_key:
        raise fail("no API key: pass --api-key or set OPENAI_API_KEY", ExitCode.BAD_INPUT)
    shown_key = redact_key(api_key)
    # A probe is interactive: one quick retry at most, not the minutes of back-off a job would accept.
    pilot = Pilot(retry=RetryPolicy(max_attempts=2, max_total_wait=2.0, patience=2.0))
    try:
        with pilot.wrap(openai.OpenAI(api_key=api_key, base_url=base_url)) as client:
            if "embedding" in model:
                embedded = client.embeddings.with_raw_response.create(model=model, input=".")
                request_id = embedded.headers.get("x-request-id")
            else:
                chatted = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "."}], max_tokens=1
                )
                request_id = chatted.headers.get("x-request-id")
        # Read before close(): the state is the Pilot's limiter's, which close() shuts down.
        state = pilot.limits(model)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        message = f"the key {shown_key} was rejected ({exc.status_code})"
        err.print(f"error: {message}", style="red", highlight=False, markup=False)
        json_error(ExitCode.AUTH, message)
        raise typer.Exit(ExitCode.AUTH) from None
    except Exception as exc:
        known = classify_exit(exc)
        if known is None:
            raise
        code, message = known
        err.print(f"error: {message}", style="red", highlight=False, markup=False)
        json_error(code, message)
        raise typer.Exit(code) from None
    finally:
        pilot.close()

    if as_json:
        out = {"base_url": str(client.base_url), "api_key": shown_key, "request_id": request_id, **state.to_dict()}
        print_json(dict(sorted(out.items())))
        return
    table = Table(title=f"Rate limits for {model} (key {shown_key}, {client.base_url})")
    for column in ("dimension", "limit", "remaining", "resets in"):
        table.add_column(column, justify="left" if column == "dimension" else "right")
    if not state.server:
        err.print("[yellow]the response carried no x-ratelimit-* headers; nothing to show[/yellow]")
    for name, dim in state.server.items():
        from ratepilot.protocol.headers import format_duration

        table.add_row(name.replace("_", " "), f"{dim.limit:,}", f"{dim.remaining:,}", format_duration(dim.reset))
    Console().print(table)
