"""``ratepilot webhooks serve``: receive OpenAI webhooks, verify them, print each event as a JSON line."""

from __future__ import annotations

import json
import sys

import typer

from ratepilot.exitcodes import ExitCode

__all__ = ["register"]

webhooks_app = typer.Typer(
    help="Receive OpenAI webhooks (Standard Webhooks signatures) so that waiting needs no polling. "
    "Exit codes: 0 stopped, 1 unexpected error, 2 bad secret or usage, 9 cannot listen (port busy).",
    no_args_is_help=True,
)


@webhooks_app.command("serve")
def serve(
    secret: str = typer.Option(
        ...,
        "--secret",
        envvar="OPENAI_WEBHOOK_SECRET",
        help="The endpoint's signing secret (whsec_...). Also read from OPENAI_WEBHOOK_SECRET.",
        show_default=False,
        show_envvar=True,
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8787, "--port", min=0, max=65535, help="Port to listen on."),
    tolerance: float = typer.Option(300.0, "--tolerance", min=1.0, help="Accepted timestamp skew, in seconds."),
) -> None:
    """Listen for webhook deliveries on any path; print every verified event as one JSON line on stdout.

    A delivery with a bad signature, a stale timestamp or a replayed webhook-id gets a 400, is reported on
    stderr and is not printed. Exit codes: 2 bad --secret (nothing started), 9 cannot listen (port busy).
    """
    import uvicorn

    from ratepilot.webhooks import WebhookEvent, WebhookReceiver

    def print_event(event: WebhookEvent) -> None:
        sys.stdout.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def print_reject(reason: str) -> None:
        sys.stderr.write(f"rejected delivery: {reason}\n")
        sys.stderr.flush()

    try:
        receiver = WebhookReceiver(secret, tolerance=tolerance, on_event=print_event, on_reject=print_reject)
    except ValueError as exc:  # the message never contains the secret
        typer.echo(f"error: --secret: {exc}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None  # nothing was started
    # Bind (and listen) here rather than inside uvicorn: a busy port is a clear message and a distinct exit
    # code, and a client that connects as soon as the address is announced waits in the backlog instead of
    # being refused while uvicorn starts.
    from ratepilot.serving import bind_socket

    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(ExitCode.CANNOT_LISTEN) from None
    port = sock.getsockname()[1]
    typer.echo(f"ratepilot: receiving webhooks on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    config = uvicorn.Config(receiver, lifespan="off", access_log=False, log_level="warning", log_config=None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")
