"""`ratepilot limits`: probe the API with one minimal request and show the live rate-limit state.

The probe goes through a Pilot-wrapped client, so it is classified like any other call (one HTTP request;
``insufficient_quota`` is reported, never retried). The key is read from ``--api-key`` or
``OPENAI_API_KEY`` and only ever shown redacted.
"""

from __future__ import annotations

import enum
import json

import typer

__all__ = ["LimitsExit", "register"]


class LimitsExit(enum.IntEnum):
    OK = 0
    ERROR = 1  # the API could not be reached, or answered with an unexpected error
    BAD_INPUT = 2  # no API key
    QUOTA = 3  # insufficient_quota / billing
    AUTH = 7  # the key was rejected


def register(app: typer.Typer) -> None:
    app.command("limits")(limits)


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

    from ratepilot.client import Pilot
    from ratepilot.errors import QuotaExhausted, RatePilotError
    from ratepilot.protocol.errors import redact_key

    err = Console(stderr=True)
    if not api_key:
        err.print("[red]error:[/red] no API key: pass --api-key or set OPENAI_API_KEY")
        raise typer.Exit(LimitsExit.BAD_INPUT)
    shown_key = redact_key(api_key)
    pilot = Pilot()
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
    except QuotaExhausted as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(LimitsExit.QUOTA) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        err.print(f"[red]error:[/red] the key {shown_key} was rejected ({exc.status_code})")
        raise typer.Exit(LimitsExit.AUTH) from None
    except openai.APIStatusError as exc:
        err.print(f"[red]error:[/red] the API answered {exc.status_code}: {RatePilotError(str(exc.message)).message}")
        raise typer.Exit(LimitsExit.ERROR) from None
    except (openai.APIConnectionError, RatePilotError) as exc:
        err.print(f"[red]error:[/red] {RatePilotError(str(exc)).message}")
        raise typer.Exit(LimitsExit.ERROR) from None
    finally:
        pilot.close()

    state = pilot.limits(model)
    if as_json:
        out = {"base_url": str(client.base_url), "api_key": shown_key, "request_id": request_id, **state.to_dict()}
        typer.echo(json.dumps(out, sort_keys=True))
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
