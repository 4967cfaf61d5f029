"""`ratepilot run REQUESTS.jsonl -o RESULTS.jsonl` — a large job at the edge of the rate limits, resumable.

Exit codes (stable, for scripts; the scheme shared by every command, :class:`ratepilot.exitcodes.ExitCode`):

* 0 — done: every request has a result line (HTTP errors such as 400 are results too; see the summary);
* 1 — an unexpected error;
* 2 — bad input: invalid requests lines (each named by line and field), options, or ``--mode batch`` on a
  file mixing endpoints; nothing was sent;
* 3 — insufficient_quota / billing limit: stopped at once, progress kept; add credit and rerun;
* 4 — --budget-usd reached: stopped before crossing it, progress kept; raise it and rerun;
* 5 — the results file (or batch job name) belongs to another job: nothing was written;
* 6 — incomplete: some requests got no answer (after every retry, or an unexpected error, logged); rerun;
* 7 — the API key was rejected (401/403);
* 8 — the API refused the work, retries ran out, or it could not be reached (``--mode batch``); rerun;
* 130 — interrupted (Ctrl-C); rerun to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ratepilot.exitcodes import EXIT_CODES_HELP

__all__ = ["register", "run_command"]

_HELP = "\n\n".join(
    [
        (
            "Run a requests JSONL against the API as fast as the account's rate limits allow, writing one Batch-"
            "API-shaped result line per request to RESULTS.jsonl."
        ),
        (
            'Input lines are Batch-API lines ({"custom_id", "method", "url", "body"}) or bare request bodies '
            '({"model", "messages", ...}, optional "metadata"; custom_id "line-N"). The whole file is validated '
            "first: an invalid line stops the run before anything is sent (or use --skip-invalid)."
        ),
        (
            "Rerunning the same command resumes: requests that already have a result are skipped. Answers are "
            "cached (SQLite, in the state dir) so a rerun of identical requests costs nothing: --cache "
            "deterministic keeps only answers that asking again would not change (temperature 0, embeddings), "
            "--no-cache asks again. `ratepilot cache stats|clear` shows and empties it."
        ),
        EXIT_CODES_HELP,
    ]
)


def run_command(
    requests: Annotated[Path, typer.Argument(help="The requests JSONL.", dir_okay=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The results JSONL (appended to; resumes).")],
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="online | batch (Batch API, 50% cheaper, results within 24h; one endpoint per file) | auto (batch "
        "when the job is large enough - 2,000+ requests or $1+ saving -, has one endpoint and no --deadline under "
        "24h; the summary says why). Default: online (auto with --tier auto).",
    ),
    tier: str | None = typer.Option(
        None,
        "--tier",
        help="Service tier of every chat/Responses request: standard | flex (Batch prices, slower, sometimes "
        "unavailable) | priority (faster, dearer) | auto (the router: flex while --deadline allows, standard when "
        "it needs, the Batch API for a deadline of 24h+). Default: each line's own service_tier.",
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", envvar="OPENAI_BASE_URL", help="API base URL (e.g. a simulator's http://127.0.0.1:PORT/v1)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="OPENAI_API_KEY", help="API key (default: $OPENAI_API_KEY).", show_default=False
    ),
    budget_usd: float | None = typer.Option(
        None, "--budget-usd", min=0.0, help="Stop before spending more than this (USD); rerun with more to continue."
    ),
    store: str = typer.Option(
        "memory://", "--store", help="Limiter store: memory:// | sqlite:///path | redis://host:port/db (shared limits)."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Do not answer from (or fill) the response cache (same as --cache never)."
    ),
    cache: str | None = typer.Option(
        None,
        "--cache",
        metavar="always|deterministic|never",
        help="What the response cache answers and keeps: always (default: every successful answer, temperature > 0 "
        "too), deterministic (only embeddings, moderations and requests with temperature 0), never.",
        show_default=False,
    ),
    cache_path: Annotated[
        Path | None, typer.Option("--cache-path", help="Response cache file (default: state dir).")
    ] = None,
    ordered: bool = typer.Option(False, "--ordered", help="Write results in input order (default: as they finish)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Report invalid lines and run the valid ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start RESULTS.jsonl afresh, discarding its results."),
    deadline: float | None = typer.Option(
        None, "--deadline", min=0.0, help="Seconds within which results are needed (--mode auto: under 24h = online)."
    ),
    max_in_flight: int = typer.Option(
        1024,
        "--max-in-flight",
        min=8,
        help="Safety ceiling on concurrent requests (the limiter sizes the real number).",
    ),
    max_rpm: int | None = typer.Option(
        None,
        "--max-rpm",
        min=1,
        help="Never send more than this many requests per minute, whatever the headers allow: for a limit no "
        "header reports (a project's request limit), or to leave room for others on the key.",
    ),
    max_tpm: int | None = typer.Option(
        None, "--max-tpm", min=1, help="Never send more than this many tokens per minute (as --max-rpm)."
    ),
    patience: float | None = typer.Option(
        None,
        "--patience",
        min=0.0,
        help="Seconds one request may wait for rate-limit capacity after refusals (default: as long as it takes; "
        "a request out of patience is left for a rerun, exit 6).",
    ),
    request_timeout: float | None = typer.Option(
        None,
        "--request-timeout",
        min=1.0,
        help="Seconds one attempt waits for its answer (default: 600; 900 for flex requests, as OpenAI advises). "
        "Time spent in timeouts counts toward the retry budget (10 min of waits per request).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (no live progress)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live progress bar."),
) -> None:
    from rich.console import Console

    from ratepilot.cache import CACHE_POLICIES, CachePolicy
    from ratepilot.cli.exits import classify_exit
    from ratepilot.errors import InputError
    from ratepilot.run import ExitCode, RunOptions, run_job
    from ratepilot.run.progress import LiveProgress, summary_table
    from ratepilot.run.router import TIER_NAMES

    from ._output import fail, json_error, print_json

    err = Console(stderr=True)
    if tier is not None and tier not in TIER_NAMES:
        raise fail(f"--tier must be {', '.join(TIER_NAMES)}, not {tier!r}", ExitCode.BAD_INPUT)
    mode = mode or ("auto" if tier == "auto" else "online")
    if mode not in ("online", "batch", "auto"):
        raise fail(f"--mode must be online, batch or auto, not {mode!r}", ExitCode.BAD_INPUT)
    if not requests.is_file():
        raise fail(f"{requests}: no such file", ExitCode.BAD_INPUT)
    if cache is not None and cache not in CACHE_POLICIES:
        raise fail(f"--cache must be {', '.join(CACHE_POLICIES)}, not {cache!r}", ExitCode.BAD_INPUT)
    if no_cache and cache not in (None, "never"):
        raise fail(f"--no-cache contradicts --cache {cache}", ExitCode.BAD_INPUT)
    policy: CachePolicy = "never" if no_cache else (cache or "always")
    options = RunOptions(
        requests=requests,
        output=output,
        mode=mode,  # type: ignore[arg-type]
        base_url=base_url,
        api_key=api_key,
        budget_usd=budget_usd,
        store=store,
        cache=policy != "never",
        cache_path=cache_path,
        cache_policy=policy,
        ordered=ordered,
        skip_invalid=skip_invalid,
        overwrite=overwrite,
        deadline_s=deadline,
        tier=tier,  # type: ignore[arg-type]  # checked above
        max_in_flight=max_in_flight,
        # A ceiling caps the limits the limiter learns (docs/limiter.md); it is never required.
        limiter_options={"ceiling": {k: v for k, v in (("rpm", max_rpm), ("tpm", max_tpm)) if v is not None}}
        if max_rpm is not None or max_tpm is not None
        else {},
        patience_s=patience,
        request_timeout_s=request_timeout,
    )
    live = not as_json and not quiet and err.is_terminal
    progress = LiveProgress(err) if live else None
    try:
        if progress is not None:
            with progress:
                summary = run_job(options, on_progress=progress.update)
        else:
            summary = run_job(options)
    except InputError as exc:
        err.print("bad input - nothing was sent:", style="red")
        err.print(exc.message, highlight=False, markup=False)  # messages quote fields such as messages[0]
        json_error(ExitCode.BAD_INPUT, f"bad input - nothing was sent: {exc.message}")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    except KeyboardInterrupt:
        message = "interrupted: everything answered so far is saved; rerun the same command to resume"
        err.print(f"[yellow]{message}[/yellow]")
        json_error(ExitCode.INTERRUPTED, message)
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except Exception as exc:
        # Online stops are in the summary; errors reach here from --mode batch (the Pilot's quota/budget/retries,
        # the API's refusals, a job-name conflict) or a foreign results file. Anything unknown stays a traceback.
        known = classify_exit(exc)
        if known is None:
            raise
        code, message = known
        err.print(f"error: {message}", style="red", highlight=False, markup=False)  # markup=False: [..] in text
        json_error(code, message)
        raise typer.Exit(code) from None
    if as_json:
        print_json(summary.to_dict())  # a stop (quota, budget...) is in it: "stop", "message", "exit_code"
    else:
        Console().print(summary_table(summary))
    raise typer.Exit(summary.exit_code)


def register(app: typer.Typer) -> None:
    app.command("run", help=_HELP)(run_command)
