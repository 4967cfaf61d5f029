"""``ratepilot webhooks serve``: receive OpenAI webhooks, verify them, print each event as a JSON line."""

from __future__ import annotations

import json
import socket
import sys

import typer

__all__ = ["register"]

EXIT_BAD_SECRET = 2  # the usage-error code: nothing was started
EXIT_CANNOT_LISTEN = 3

webhooks_app = typer.Typer(
    help="Receive OpenAI webhooks (Standard Webhooks signatures) so that waiting needs no polling.",
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
    stderr and is not printed.
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
        raise typer.Exit(EXIT_BAD_SECRET) from None
    # Bind here rather than inside uvicorn so that a busy port is a clear message and a distinct exit code.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_CANNOT_LISTEN) from None
    port = sock.getsockname()[1]
    typer.echo(f"ratepilot: receiving webhooks on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    config = uvicorn.Config(receiver, lifespan="off", access_log=False, log_level="warning", log_config=None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")
