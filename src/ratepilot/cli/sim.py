"""`ratepilot sim`: run the rate-limit simulator in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ratepilot.exitcodes import ExitCode

__all__ = ["register"]

_HELP = """Run a local OpenAI-compatible server that enforces rate limits like api.openai.com.

No keys configured: any non-empty API key is accepted, and each distinct key is its own organization with
its own RPM/TPM/RPD/TPD buckets per model. Flags override the --config TOML file.

Example:

  ratepilot sim --rpm 60 --tpm 20000

  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-test-anything python my_script.py

Exit codes: 0 stopped (Ctrl-C), 1 unexpected error, 2 bad configuration, 9 cannot listen (port busy).
"""


def sim(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: pick a free one)."),
    rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute per org and model."),
    tpm: int | None = typer.Option(None, "--tpm", min=1, help="Tokens per minute per org and model."),
    rpd: int | None = typer.Option(None, "--rpd", min=1, help="Requests per day per org and model (default: none)."),
    tpd: int | None = typer.Option(None, "--tpd", min=1, help="Tokens per day per org and model (default: none)."),
    credit_usd: float | None = typer.Option(
        None, "--credit-usd", min=0.0, help="Prepaid credit per org; then 429 insufficient_quota (default: unlimited)."
    ),
    latency_ms: float | None = typer.Option(None, "--latency-ms", min=0.0, help="Base latency of every response."),
    latency_per_token_ms: float | None = typer.Option(
        None, "--latency-per-token-ms", min=0.0, help="Extra latency per output token."
    ),
    responder: str | None = typer.Option(None, "--responder", help="echo | fixed | classify."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for jitter, faults and ids."),
    config: Annotated[
        Path | None,
        typer.Option("--config", dir_okay=False, help="TOML file: models, pools, limits, keys, prices, faults."),
    ] = None,
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    from ratepilot.sim import ConfigError, SimConfig, serve

    overrides = {
        "rpm": rpm,
        "tpm": tpm,
        "rpd": rpd,
        "tpd": tpd,
        "credit_usd": credit_usd,
        "latency_ms": latency_ms,
        "latency_per_token_ms": latency_per_token_ms,
        "responder": responder,
        "seed": seed,
    }
    try:
        cfg = SimConfig.from_toml(config, **overrides) if config else SimConfig().with_overrides(**overrides)
    except (ConfigError, TypeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    limits = ", ".join(f"{n.upper()} {getattr(cfg, n)}" for n in ("rpm", "tpm", "rpd", "tpd") if getattr(cfg, n))

    def announce(base_url: str) -> None:
        root = base_url.removesuffix("/v1")
        typer.echo(f"ratepilot simulator on {base_url}  ({limits or 'no limits'}; any non-empty key)")
        typer.echo("try:")
        typer.echo(
            f"  curl -s {base_url}/chat/completions -H 'Authorization: Bearer sk-test-1' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}\' -i'
        )
        typer.echo(f"  OPENAI_BASE_URL={base_url} OPENAI_API_KEY=sk-test-1 python your_script.py")
        typer.echo(f"  stats: curl -s {root}/sim/stats")

    try:
        serve(cfg, host=host, port=port, log_level=log_level, announce=announce)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(ExitCode.CANNOT_LISTEN) from None


def register(app: typer.Typer) -> None:
    app.command("sim", help=_HELP)(sim)
