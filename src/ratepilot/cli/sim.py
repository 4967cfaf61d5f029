"""`ratepilot sim`: run the rate-limit simulator in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ratepilot.exitcodes import ExitCode

__all__ = ["register"]

_HELP = "\n\n".join(
    [
        "Run a local OpenAI-compatible server that enforces rate limits like api.openai.com.",
        (
            "No keys configured: any non-empty API key is accepted, and each distinct key is its own organization "
            "with its own RPM/TPM/RPD/TPD buckets per model. Flags override the --config TOML file, which "
            "overrides --realistic."
        ),
        (
            "By default only minute (and day) buckets are enforced, and refused requests count. --realistic adds "
            "what the real API also does: limits quantized to 1 s windows, responses and 429s without rate-limit "
            "headers or retry-after, and a ramp limit (429 slow_down when traffic grows too fast)."
        ),
        "Example:",
        "  ratepilot sim --rpm 60 --tpm 20000",
        "  ratepilot sim --rpm 600 --tpm 60000 --realistic --seed 1",
        "  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-test-anything python my_script.py",
        "Exit codes: 0 stopped (Ctrl-C), 1 unexpected error, 2 bad configuration, 9 cannot listen (port busy).",
    ]
)


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
    quota_error_code: str | None = typer.Option(
        None,
        "--quota-error-code",
        help="Code of the out-of-credit 429: insufficient_quota, credit_balance_exhausted, "
        "organization_spend_limit_exceeded, project_spend_limit_exceeded, organization_usage_limit_exceeded... "
        "(default: insufficient_quota).",
        show_default=False,
    ),
    latency_ms: float | None = typer.Option(None, "--latency-ms", min=0.0, help="Base latency of every response."),
    latency_per_token_ms: float | None = typer.Option(
        None, "--latency-per-token-ms", min=0.0, help="Extra latency per output token."
    ),
    responder: str | None = typer.Option(None, "--responder", help="echo | fixed | classify."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for jitter, faults and ids."),
    realistic: bool = typer.Option(
        False,
        "--realistic",
        help="Enforce like the real API (docs/simulator.md, 'Realistic enforcement'): --quantum-s 1, refusals "
        "charged, --headers-missing-p 0.02, --headers-on-429-p 0.5, --retry-after-p 0.5, --ramp-factor 2, "
        "--ramp-window-s 15, --ramp-floor 0.5. Other flags override these values.",
    ),
    quantum_s: float | None = typer.Option(
        None,
        "--quantum-s",
        min=0.0,
        max=60.0,
        help="Also enforce every RPM/TPM limit over windows of this many seconds (capacity limit × Q / 60), "
        "so a burst the minute bucket allows is refused; headers still show the minute bucket. 0: off.",
    ),
    charge_refusals: bool | None = typer.Option(
        None,
        "--charge-refusals/--no-charge-refusals",
        help="A refused (429) request still costs one request, as on the real API (default: charge).",
        show_default=False,
    ),
    headers_missing_p: float | None = typer.Option(
        None,
        "--headers-missing-p",
        min=0.0,
        max=1.0,
        help="Probability that a successful response lacks the x-ratelimit-* headers (default: 0).",
    ),
    token_headers_unknown_p: float | None = typer.Option(
        None,
        "--token-headers-unknown-p",
        min=0.0,
        max=1.0,
        help="Probability that a successful response's x-ratelimit-*-tokens headers read -1, as Azure's "
        "Responses API has sent (default: 0).",
    ),
    headers_on_429_p: float | None = typer.Option(
        None,
        "--headers-on-429-p",
        min=0.0,
        max=1.0,
        help="Probability that a rate-limit 429 carries the x-ratelimit-* headers (default: 1).",
    ),
    retry_after_p: float | None = typer.Option(
        None,
        "--retry-after-p",
        min=0.0,
        max=1.0,
        help="Probability that a rate-limit 429 carries retry-after (and retry-after-ms) (default: 1).",
    ),
    ramp_factor: float | None = typer.Option(
        None,
        "--ramp-factor",
        min=0.0,
        help="Ramp limit: a window may admit at most this × what the previous one admitted, else 429 "
        "slow_down (>= 1; 0 or not given: off).",
    ),
    ramp_window_s: float | None = typer.Option(
        None, "--ramp-window-s", min=0.0, help="Ramp limit: window length in seconds (default: 15)."
    ),
    ramp_floor: float | None = typer.Option(
        None,
        "--ramp-floor",
        min=0.0,
        help="Ramp limit: a window may always admit this fraction of its share of the minute limit "
        "(limit × window / 60) (default: 0.5).",
    ),
    slow_down_status: int | None = typer.Option(
        None,
        "--slow-down-status",
        help="Status of the ramp limit's slow_down refusal: 429, or 503 as older servers sent it (default: 429).",
        show_default=False,
    ),
    flex_unavailable_p: float | None = typer.Option(
        None,
        "--flex-unavailable-p",
        min=0.0,
        max=1.0,
        help="Probability that a service_tier=flex request is refused 429 'Resource Unavailable' (unbilled; "
        "busy periods: flex_busy in --config) (default: 0).",
    ),
    flex_latency_ms: float | None = typer.Option(
        None, "--flex-latency-ms", min=0.0, help="Latency added to a flex answer, in ms (default: 0)."
    ),
    config: Annotated[
        Path | None,
        typer.Option("--config", dir_okay=False, help="TOML file: models, pools, limits, keys, prices, faults."),
    ] = None,
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    from dataclasses import replace

    from ratepilot.sim import ConfigError, SimConfig, serve

    overrides = {
        "rpm": rpm,
        "tpm": tpm,
        "rpd": rpd,
        "tpd": tpd,
        "credit_usd": credit_usd,
        "quota_error_code": quota_error_code,
        "latency_ms": latency_ms,
        "latency_per_token_ms": latency_per_token_ms,
        "responder": responder,
        "seed": seed,
        "count_refused_requests": charge_refusals,
        "ramp_window_s": ramp_window_s,
        "ramp_floor": ramp_floor,
        "slow_down_status": slow_down_status,
        "flex_unavailable_p": flex_unavailable_p,
        "flex_latency_ms": flex_latency_ms,
    }
    preset = "realistic" if realistic else None
    fault_overrides = {
        "missing_headers": headers_missing_p,
        "unknown_token_headers": token_headers_unknown_p,
        "headers_on_429_p": headers_on_429_p,
        "retry_after_p": retry_after_p,
    }
    try:
        if config:
            cfg = SimConfig.from_toml(config, preset=preset, **overrides)
        else:
            cfg = (SimConfig.realistic() if realistic else SimConfig()).with_overrides(**overrides)
        changes: dict[str, Any] = {}
        for name, value in (("quantum_s", quantum_s), ("ramp_factor", ramp_factor)):
            if value is not None:  # not given: keep the file's or the preset's value; 0 turns it off
                changes[name] = value or None
        faults: dict[str, Any] = {k: v for k, v in fault_overrides.items() if v is not None}
        if faults:
            if cfg.faults.missing_headers_on_429 and "headers_on_429_p" in faults:
                faults["missing_headers_on_429"] = False  # the flag's probability replaces the file's bool
            changes["faults"] = replace(cfg.faults, **faults)
        if changes:
            cfg = replace(cfg, **changes)
    except (ConfigError, TypeError) as exc:
        text = str(exc)
        # Name the flag when a flag's value is the bad one (the message names the setting).
        flagged: tuple[tuple[str, str, object], ...] = (
            ("quantum_s", "--quantum-s", quantum_s),
            ("ramp_factor", "--ramp-factor", ramp_factor),
            ("ramp_window_s", "--ramp-window-s", ramp_window_s),
            ("ramp_floor", "--ramp-floor", ramp_floor),
            ("slow_down_status", "--slow-down-status", slow_down_status),
            ("quota_error_code", "--quota-error-code", quota_error_code),
        )
        for name, flag, given in flagged:
            if given is not None and text.startswith(f"{name} "):
                text = f"{flag}: {text}"
        typer.echo(f"error: {text}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    limits = ", ".join(f"{n.upper()} {getattr(cfg, n)}" for n in ("rpm", "tpm", "rpd", "tpd") if getattr(cfg, n))
    extras = []
    if cfg.quantum_s is not None:
        extras.append(f"quantized to {cfg.quantum_s:g}s")
    if cfg.ramp_factor is not None:
        extras.append(f"ramp x{cfg.ramp_factor:g} per {cfg.ramp_window_s:g}s")
    extras.append("refusals charged" if cfg.count_refused_requests else "refusals free")
    limits = "; ".join(x for x in (limits or "no limits", ", ".join(extras)) if x)

    def announce(base_url: str) -> None:
        root = base_url.removesuffix("/v1")
        typer.echo(f"ratepilot simulator on {base_url}  ({limits}; any non-empty key)")
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
