"""`ratepilot batch submit|status|wait|collect|cancel|list|forget` — the Batch API pipeline, resumable.

Exit codes (stable, for scripts; the scheme shared by every command, :class:`ratepilot.exitcodes.ExitCode`):

* 0 — done: every request has its final answer (successes and reported failures); or the command did
  what it was asked (``submit``, ``cancel``, ``list``);
* 1 — an unexpected error;
* 2 — bad input: an invalid requests file (line and field named; nothing uploaded), an unknown job, a bad
  option, no API key;
* 3 — insufficient_quota / billing limit: stopped, progress kept; add credit and rerun;
* 4 — the Pilot's budget was reached: stopped, progress kept;
* 5 — conflict: the job name is taken by other input, or the results file belongs to another job;
* 6 — not finished: ``wait`` timed out, or ``collect`` wrote a partial file (some requests not answered yet);
* 7 — the API key was rejected;
* 8 — the API refused the work, retries ran out, or the API could not be reached (rerun to resume);
* 10 — done, but some results are errors (HTTP errors, or requests the batch could not answer): counted by code;
* 130 — interrupted.

Over 500 lines, one concept: the ``ratepilot batch`` command group (each subcommand a thin call into
:class:`~ratepilot.batch.BatchRunner`).
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ratepilot.batch import BatchRunner, JobStatus

from ratepilot.exitcodes import EXIT_CODES_HELP, ExitCode

from ._output import fail, print_json

__all__ = ["app", "register"]

app = typer.Typer(
    name="batch",
    help=(
        "Run a requests JSONL through the Batch API (50% cheaper): validate, shard, submit, track, collect in "
        "input order, retry what failed retryably. Every command is resumable: rerun it after a crash. "
        + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
)

_STATE_DIR = typer.Option(
    None,
    "--state-dir",
    envvar="RATEPILOT_HOME",
    help="Where job state lives (default ~/.ratepilot).",
    show_default=False,
)
_BASE_URL = typer.Option(
    None, "--base-url", envvar="OPENAI_BASE_URL", help="API base URL, e.g. a simulator's http://127.0.0.1:PORT/v1."
)
_JSON = typer.Option(False, "--json", help="Print JSON instead of tables (for scripts).")
_POLL = typer.Option(
    None,
    "--poll-interval",
    min=0.0,
    metavar="SECONDS",
    help="Fixed seconds between status polls of each batch (default: adaptive, budgeted by ratepilot.poll).",
)
_FALLBACK = typer.Option(
    "none", "--fallback", help="'online': answer requests still failing after --max-attempts through the online API."
)
_WEBHOOK_PORT_HELP = (
    "Wait on the API's batch.* webhooks instead of polling: receive them on this port (point the "
    "endpoint configured at platform.openai.com here, e.g. through a tunnel). Batches are then retrieved only "
    "to confirm an event, plus a slow backstop poll in case one is lost. Needs the endpoint's secret "
    "(OPENAI_WEBHOOK_SECRET)."
)
# No min/max here (checked in _webhooks): typer would print the range next to the metavar, widening --help.
_WEBHOOK_PORT = typer.Option(None, "--webhook-port", metavar="PORT", help=_WEBHOOK_PORT_HELP, show_default=False)
_WEBHOOK_PORT_SUBMIT = typer.Option(
    None,
    "--webhook-port",
    metavar="PORT",
    help=_WEBHOOK_PORT_HELP + " Only with --wait (submit alone does not wait).",
    show_default=False,
)
_KEEP_FILES = typer.Option(
    False,
    "--keep-files",
    help="Keep the job's uploaded input files on the server. Without it they are deleted when `submit`, `wait` "
    "or `ratepilot run --mode batch` finds the job done (every request answered; for `submit`, in practice "
    "with --wait) — never by `collect` alone or `cancel`. Remembered by the job: a later command without the "
    "flag keeps them too.",
)
_WEBHOOK_HOST = typer.Option(
    None,
    "--webhook-host",
    help="With --webhook-port: the interface to listen on (default 127.0.0.1).",
    show_default=False,
)
_WEBHOOK_SECRET = typer.Option(
    None,
    "--webhook-secret",
    envvar="OPENAI_WEBHOOK_SECRET",
    help="With --webhook-port: the endpoint's signing secret (whsec_...); deliveries that do not verify are "
    "refused. Prefer setting OPENAI_WEBHOOK_SECRET: a secret on the command line is visible to other users "
    "of the machine (ps, /proc) and stays in the shell's history.",
    show_default=False,
    show_envvar=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="batch")


# ---------------------------------------------------------------------------------------------- plumbing


def _parse_token_limits(values: list[str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for value in values:
        model, sep, number = value.partition("=")
        if not sep or not model or not number.replace("_", "").replace(",", "").isdigit():
            raise typer.BadParameter(f"expected MODEL=TOKENS, got {value!r}", param_hint="--token-limit")
        limits[model] = int(number.replace("_", "").replace(",", ""))
    return limits


@dataclass(frozen=True)
class _Webhooks:
    """Where to receive the API's webhooks while waiting, and the secret their signatures are checked with."""

    host: str
    port: int
    secret: str = field(repr=False)  # never in a traceback's or a log's repr


def _webhooks(port: int | None, host: str | None, secret: str | None) -> _Webhooks | None:
    if port is None:  # a secret alone changes nothing (OPENAI_WEBHOOK_SECRET may be set for other tools)
        if host is not None:
            raise typer.BadParameter("only with --webhook-port", param_hint="--webhook-host")
        return None
    if not 0 <= port <= 65535:
        raise typer.BadParameter(f"{port} is not a port number (0-65535)", param_hint="--webhook-port")
    if not secret:
        raise typer.BadParameter(
            "set --webhook-secret or OPENAI_WEBHOOK_SECRET (the endpoint's whsec_... signing secret)",
            param_hint="--webhook-port",
        )
    return _Webhooks(host or "127.0.0.1", port, secret)


def _start_receiver(stack: ExitStack, webhooks: _Webhooks) -> Any:
    """Start receiving webhooks (verified with the secret) on a background thread; stopped with ``stack``."""
    from ratepilot.webhooks import ReceiverServer, WebhookReceiver

    def report_reject(reason: str) -> None:
        typer.echo(f"ratepilot: refused a webhook delivery: {reason}", err=True)

    try:
        receiver = WebhookReceiver(webhooks.secret, on_reject=report_reject)
    except ValueError as exc:  # the message never contains the secret
        raise fail(f"--webhook-secret: {exc}", ExitCode.BAD_INPUT) from None
    server = ReceiverServer(receiver, webhooks.host, webhooks.port)
    try:
        server.start()
    except OSError as exc:
        raise fail(
            f"cannot listen on {webhooks.host}:{webhooks.port}: {exc.strerror or exc}", ExitCode.CANNOT_LISTEN
        ) from None
    stack.callback(server.stop)
    typer.echo(f"ratepilot: receiving webhooks on {server.url}", err=True)
    return receiver


@contextmanager
def _runner(
    state_dir: Path | None,
    base_url: str | None,
    *,
    poll_interval: float | None = None,
    fallback: str = "none",
    webhooks: _Webhooks | None = None,
    job: str | None = None,
    **config: Any,
) -> Iterator[BatchRunner]:
    """A runner on ``OPENAI_API_KEY`` / ``--base-url``, its client wrapped by a Pilot (throttled, retried);
    with ``webhooks``, a receiver runs alongside and the runner waits on its events instead of polling.
    ``job``: a job that must exist, checked before the receiver takes its port."""
    from openai import OpenAI

    from ratepilot.batch import BatchConfig, BatchRunner, sdk_fallback

    if fallback not in ("none", "online"):
        raise typer.BadParameter("use 'none' or 'online'", param_hint="--fallback")
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        raise fail("set OPENAI_API_KEY (any non-empty value for a simulator)", ExitCode.BAD_INPUT)
    cfg = BatchConfig(poll_interval=poll_interval, **config)
    with ExitStack() as stack:
        raw = stack.enter_context(OpenAI(api_key=api_key, base_url=base_url))
        client = raw
        try:  # every upload, poll and list goes through the pilot's throttled transport when it is available
            from ratepilot.client import Pilot

            pilot = Pilot()
            stack.callback(pilot.close)
            client = stack.enter_context(pilot.wrap(raw))
        except ImportError:  # pragma: no cover - the client layer is optional for the batch pipeline
            pass
        runner = stack.enter_context(
            BatchRunner(
                client,
                state_dir=state_dir,
                config=cfg,
                fallback=sdk_fallback(client) if fallback == "online" else None,
            )
        )
        if job is not None:  # an unknown job is a plain error (exit 2), not a receiver started for nothing
            _run_guarded(lambda: runner.status(job))
        if webhooks is not None:  # the runner subscribes to it only when it waits
            runner.receiver = _start_receiver(stack, webhooks)
        yield runner


def _run_guarded(fn: Any) -> Any:
    """Map library errors to the shared exit codes and clear, key-free messages (never a traceback).

    The wrapped client raises the Pilot's errors (quota, budget, request too large, retries exhausted);
    the pipeline its own (bad input, job conflicts); the SDK refusals and connection failures. An error
    :func:`~ratepilot.cli.exits.classify_exit` does not know is a bug and stays a traceback (exit 1).
    """
    from ratepilot.cli.exits import classify_exit

    try:
        return fn()
    except (Exception, KeyboardInterrupt) as exc:
        known = classify_exit(exc)
        if known is None:
            raise
        code, message = known
        raise fail(message, code) from None


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped or captured output: rich would squeeze the tables to 80 columns; ids must stay readable.
    return console if console.is_terminal else Console(width=200)


def _money(usd: float) -> str:
    """Dollars with enough digits for small jobs: 3 significant digits under $0.01 ($0.000123), else cents
    and two more ($1.2345)."""
    if usd <= 0:
        return "0.00"
    if usd < 0.01:
        return f"{usd:.{2 - math.floor(math.log10(usd))}f}"
    return f"{usd:,.4f}"


def _clock_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _caption(status: JobStatus, refreshed: bool) -> str:
    if status.polled_at is None:
        return "from local state (no batch running)"
    ago = max(0.0, status.now - status.polled_at)
    when = f"{_clock_time(status.polled_at)}, {ago:,.0f}s ago"
    if refreshed:
        return f"batches retrieved just now ({when})"
    return f"last known state, batches last polled {when}; --refresh to retrieve them now"


def _print_status(status: JobStatus, as_json: bool, *, refreshed: bool = False) -> None:
    if as_json:
        print_json(status.to_dict())
        return
    from rich.table import Table

    table = Table(
        title=f"batch job {status.name} — {status.state}",
        title_justify="left",
        caption=_caption(status, refreshed),
        caption_justify="left",
    )
    for col in (
        "shard",
        "round",
        "model",
        "state",
        "batch",
        "status",
        "requests",
        "done",
        "failed",
        "est tokens",
        "cost $",
    ):
        table.add_column(
            col, justify="right" if col in ("requests", "done", "failed", "est tokens", "cost $") else "left"
        )
    for s in status.shards:
        table.add_row(
            str(s.shard),
            str(s.round),
            s.model,
            s.state + (" (waits for capacity)" if s.error_code == "capacity_wait" and s.state == "uploaded" else ""),
            s.batch_id or "-",
            s.batch_status or "-",
            f"{s.n_requests:,}",
            f"{s.completed:,}",
            f"{s.failed:,}",
            f"{s.est_tokens:,}",
            _money(s.cost_usd),
        )
    console = _console()
    console.print(table)
    eta = "-" if status.eta_seconds is None else f"{status.eta_seconds:,.0f}s"
    console.print(
        f"requests {status.total:,}: done {status.done:,}, failed {status.failed:,}, "
        f"waiting for retry {status.retry:,}, pending {status.pending:,} | "
        f"cost so far ${_money(status.cost_usd)} | ETA {eta}"
    )
    if status.failure_codes:
        codes = ", ".join(f"{code or '?'} x{n}" for code, n in sorted(status.failure_codes.items()))
        console.print(f"failed for good: {codes}")


# ---------------------------------------------------------------------------------------------- commands


@app.command()
def submit(
    requests: Annotated[Path, typer.Argument(help="Requests JSONL: Batch-API lines or bare request bodies.")],
    name: str | None = typer.Option(None, "--name", help="Job name (default: file name + hash of its path)."),
    output: Annotated[Path | None, typer.Option("-o", "--output", help="With --wait: write results here.")] = None,
    wait_: bool = typer.Option(False, "--wait", help="Wait until every request is answered."),
    timeout: float | None = typer.Option(None, "--timeout", help="With --wait: give up waiting after N seconds."),
    max_requests: int = typer.Option(50_000, "--max-requests", min=1, metavar="N", help="Requests per batch file."),
    max_bytes: int = typer.Option(
        200 * 1024 * 1024, "--max-bytes", min=1, metavar="BYTES", help="Bytes per batch file."
    ),
    max_embedding_inputs: int = typer.Option(
        50_000, "--max-embedding-inputs", min=1, metavar="N", help="Embedding inputs per file."
    ),
    token_limit: list[str] = typer.Option(  # noqa: B008
        [], "--token-limit", help="MODEL=TOKENS enqueued-token limit (repeatable; otherwise learned)."
    ),
    token_estimate: str = typer.Option("fast", "--token-estimate", help="'fast' (bytes/4) or 'exact' (tokenizer)."),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, metavar="N", help="Submissions per request, retries included."
    ),
    poll_interval: float | None = _POLL,
    fallback: str = _FALLBACK,
    keep_files: bool = _KEEP_FILES,
    webhook_port: int | None = _WEBHOOK_PORT_SUBMIT,
    webhook_host: str | None = _WEBHOOK_HOST,
    webhook_secret: str | None = _WEBHOOK_SECRET,
    state_dir: Path | None = _STATE_DIR,
    base_url: str | None = _BASE_URL,
    as_json: bool = _JSON,
) -> None:
    """Validate REQUESTS (nothing is uploaded if any line is bad), shard it, upload and create the batches.

    Rerunning the same command resumes the job; it never creates a batch twice.

    With --wait and --webhook-port, the wait is driven by the API's batch webhooks instead of polling.
    """
    from ratepilot.batch.runner import check_output, default_job_name

    if token_estimate not in ("fast", "exact"):
        raise typer.BadParameter("use 'fast' or 'exact'", param_hint="--token-estimate")
    webhooks = _webhooks(webhook_port, webhook_host, webhook_secret)
    if webhooks is not None and not wait_:
        raise typer.BadParameter("only with --wait (submit alone does not wait)", param_hint="--webhook-port")
    if output is not None and not wait_:
        # Right after submitting nothing is answered yet: the file would be empty. `wait -o` writes it.
        raise typer.BadParameter(
            "only with --wait; without it, write the results later with `ratepilot batch wait NAME -o FILE`",
            param_hint="-o/--output",
        )
    runner_cm = _runner(
        state_dir,
        base_url,
        poll_interval=poll_interval,
        fallback=fallback,
        webhooks=webhooks,
        max_requests=max_requests,
        max_bytes=max_bytes,
        max_embedding_inputs=max_embedding_inputs,
        token_limits=_parse_token_limits(token_limit),
        token_estimate=token_estimate,
        max_attempts=max_attempts,
        keep_files=keep_files,
    )
    with runner_cm as runner:
        if output is not None:  # refuse a results file of another job before anything is uploaded
            _run_guarded(lambda: check_output(output, name or default_job_name(requests)))
        status = _run_guarded(lambda: runner.submit(requests, name=name))
        if wait_:
            status = _run_guarded(lambda: runner.wait(status.name, timeout=timeout))
        _print_status(status, as_json)
        if not wait_:
            _next_steps(status.name, as_json)
        if output is not None:
            summary = _run_guarded(lambda: runner.collect(status.name, output))
            _print_collect(summary, as_json)
            if not summary.complete:
                raise typer.Exit(ExitCode.INCOMPLETE)
        if wait_:
            _exit_unless_all_done(status, as_json)


def _next_steps(name: str, as_json: bool) -> None:
    """After a submit without --wait: the job's name and the commands that go on from here."""
    lines = (
        f"submitted job: {name}",
        f"next: ratepilot batch wait {name} -o FILE   (tracks, retries, writes results in input order)",
        f"      ratepilot batch status {name} --refresh",
    )
    for line in lines:  # on stderr with --json, so stdout stays one JSON document
        typer.echo(line, err=as_json)


@app.command()
def status(
    name: str | None = typer.Argument(None, help="Job name (default: every job)."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Retrieve each running batch once (low priority) first; needs OPENAI_API_KEY."
    ),
    state_dir: Path | None = _STATE_DIR,
    base_url: str | None = typer.Option(
        None, "--base-url", envvar="OPENAI_BASE_URL", help="With --refresh: the API base URL."
    ),
    as_json: bool = _JSON,
) -> None:
    """Show a table per job: shards, batches, states, counts, ETA, cost so far.

    Without --refresh it shows the last known state (no API call); the caption says when it was polled.
    """
    from openai import OpenAI

    from ratepilot.batch import BatchRunner

    runner_cm: Any
    if refresh:
        runner_cm = _runner(state_dir, base_url)
    else:  # local state only: no key needed and nothing is sent
        client = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
        runner_cm = BatchRunner(client, state_dir=state_dir, close_client=True)
    with runner_cm as runner:
        names = [name] if name else [j.name for j in runner.jobs() if j.state != "planning"]
        if not names:
            typer.echo("no batch jobs")
        for n in names:
            get = runner.refresh if refresh else runner.status
            _print_status(_run_guarded(lambda n=n, get=get: get(n)), as_json, refreshed=refresh)


@app.command()
def wait(
    name: Annotated[str, typer.Argument(help="Job name.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Collect the results here when done.")] = None,
    timeout: float | None = typer.Option(None, "--timeout", help="Give up waiting after N seconds (exit 6)."),
    poll_interval: float | None = _POLL,
    fallback: str = _FALLBACK,
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, metavar="N", help="Submissions per request, retries included."
    ),
    keep_files: bool = _KEEP_FILES,
    webhook_port: int | None = _WEBHOOK_PORT,
    webhook_host: str | None = _WEBHOOK_HOST,
    webhook_secret: str | None = _WEBHOOK_SECRET,
    state_dir: Path | None = _STATE_DIR,
    base_url: str | None = _BASE_URL,
    as_json: bool = _JSON,
) -> None:
    """Track the job's batches until every request is answered: submits deferred shards, collects, retries.

    With --webhook-port, batches are not polled: the API's batch.* webhooks wake the wait instead.
    """
    webhooks = _webhooks(webhook_port, webhook_host, webhook_secret)
    with _runner(
        state_dir,
        base_url,
        poll_interval=poll_interval,
        fallback=fallback,
        max_attempts=max_attempts,
        keep_files=keep_files,
        webhooks=webhooks,
        job=name,
    ) as r:
        result = _run_guarded(lambda: r.wait(name, timeout=timeout))
        _print_status(result, as_json)
        if output is not None:
            summary = _run_guarded(lambda: r.collect(name, output))
            _print_collect(summary, as_json)
        _exit_unless_all_done(result, as_json)


@app.command()
def collect(
    name: Annotated[str, typer.Argument(help="Job name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Results JSONL (rewritten in input order).")],
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a results file of another job."),
    state_dir: Path | None = _STATE_DIR,
    base_url: str | None = _BASE_URL,
    as_json: bool = _JSON,
) -> None:
    """Download finished batches' output and error files and write every answered request, in input order.

    Exit 6 when some requests have no answer yet (the file then holds the ones that do; collect again later).
    """
    with _runner(state_dir, base_url) as runner:
        summary = _run_guarded(lambda: runner.collect(name, output, overwrite=overwrite))
        _print_collect(summary, as_json)
        if not summary.complete:
            raise typer.Exit(ExitCode.INCOMPLETE)
        _exit_unless_all_done(runner.status(name), as_json)


def _exit_unless_all_done(status: Any, as_json: bool) -> None:
    """Exit 6 while requests have no answer yet; exit 10 when every one has, but some answers are errors
    (a job whose requests all failed must not look like a success to a script)."""
    if not status.complete:
        raise typer.Exit(ExitCode.INCOMPLETE)
    if status.failed:
        codes = ", ".join(
            f"{n:,} x {code or '?'}" for code, n in sorted(status.failure_codes.items(), key=lambda kv: -kv[1])
        )
        typer.echo(
            f"{status.failed:,} of {status.total:,} result(s) are errors ({codes}): "
            "see each line's response.body or error.",
            err=True,
        )
        raise typer.Exit(ExitCode.HTTP_ERRORS)


def _print_collect(summary: Any, as_json: bool) -> None:
    if as_json:
        print_json({**summary.__dict__, "complete": summary.complete})
    else:
        typer.echo(
            f"wrote {summary.written:,} results to {summary.path} (done {summary.done:,}, failed {summary.failed:,}); "
            f"{summary.missing:,} not answered yet"
        )


@app.command()
def cancel(
    name: Annotated[str, typer.Argument(help="Job name.")],
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once cancel is requested."),
    state_dir: Path | None = _STATE_DIR,
    base_url: str | None = _BASE_URL,
    poll_interval: float | None = _POLL,
    as_json: bool = _JSON,
) -> None:
    """Cancel the job's running batches. Finished results are kept: `collect` writes them.

    Resume later with `ratepilot batch submit REQUESTS --name NAME`: it resubmits what did not finish.
    """
    with _runner(state_dir, base_url, poll_interval=poll_interval) as runner:
        result = _run_guarded(lambda: runner.cancel(name, wait=not no_wait))
        _print_status(result, as_json)
        job = runner.store.get_job(name)
        hints = (
            f"cancelled job: {name}; finished results are kept",
            f"collect them: ratepilot batch collect {name} -o FILE",
            f"resume:       ratepilot batch submit {shlex.quote(job.input_path) if job else 'REQUESTS'} --name {name}",
        )
        for line in hints:
            typer.echo(line, err=as_json)


@app.command("list")
def list_(
    limit: int = typer.Option(20, "--limit", min=1, max=100, help="Batches per page."),
    after: str | None = typer.Option(None, "--after", help="Cursor: the last batch id of the previous page."),
    all_pages: bool = typer.Option(False, "--all", help="Page through every batch."),
    jobs: bool = typer.Option(False, "--jobs", help="List local jobs instead of the server's batches."),
    status_filter: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only batches in this status (repeatable: --status failed --status expired); the API has no "
            "filter, so the pages are read and filtered here.",
        ),
    ] = None,
    job_filter: str | None = typer.Option(None, "--job", help="Only the batches of this ratepilot job (by metadata)."),
    state_dir: Path | None = _STATE_DIR,
    base_url: str | None = _BASE_URL,
    as_json: bool = _JSON,
) -> None:
    """Page through the organization's batches (newest first), naming ratepilot's job and shard of each."""
    if jobs:  # local state only: no key needed and nothing is sent
        _list_jobs(state_dir, as_json)
        return
    with _runner(state_dir, base_url) as runner:

        def pages() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            cursor = after
            while True:
                kwargs: dict[str, Any] = {"limit": limit}
                if cursor:
                    kwargs["after"] = cursor
                page = runner.client.batches.list(**kwargs)
                for b in page.data:
                    meta = dict(b.metadata or {})
                    counts = b.request_counts
                    out.append(
                        {
                            "id": b.id,
                            "status": b.status,
                            "endpoint": b.endpoint,
                            "job": meta.get("ratepilot_job"),
                            "shard": meta.get("ratepilot_shard"),
                            "total": counts.total if counts else None,
                            "completed": counts.completed if counts else None,
                            "failed": counts.failed if counts else None,
                            "created_at": b.created_at,
                        }
                    )
                cursor = page.data[-1].id if page.data else None
                if not (all_pages and page.has_more and cursor):
                    out.append({"next_after": cursor if page.has_more else None})
                    return out

        rows = _run_guarded(pages)
        cursor_row = rows.pop()
        # Client-side: the list endpoint has no status or metadata filters (a page may then show fewer rows).
        rows = [
            r
            for r in rows
            if (not status_filter or r["status"] in status_filter) and (job_filter is None or r["job"] == job_filter)
        ]
        if as_json:
            print_json({"data": rows, **cursor_row})
            return
        from rich.table import Table

        table = Table(title="batches (newest first)", title_justify="left")
        for col in ("id", "status", "endpoint", "job", "shard", "done/total", "failed"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["id"],
                r["status"],
                r["endpoint"],
                r["job"] or "-",
                r["shard"] or "-",
                f"{r['completed']}/{r['total']}",
                str(r["failed"]),
            )
        console = _console()
        console.print(table)
        if cursor_row["next_after"]:
            console.print(f"more: ratepilot batch list --after {cursor_row['next_after']}")


def _list_jobs(state_dir: Path | None, as_json: bool) -> None:
    """``list --jobs``: the local jobs, from the state directory alone (no client, no key)."""
    from ratepilot import paths
    from ratepilot.batch.state import DEFAULT_DB_NAME, BatchState

    directory = state_dir if state_dir is not None else paths.state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with BatchState(directory / DEFAULT_DB_NAME) as state:
        rows = [{"name": j.name, "state": j.state, "total": j.total, "input": j.input_path} for j in state.list_jobs()]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    jobs_table = Table(title="local batch jobs (oldest first)", title_justify="left")
    for col in ("name", "state", "requests", "input"):
        jobs_table.add_column(col, justify="right" if col == "requests" else "left")
    for row in rows:
        jobs_table.add_row(str(row["name"]), str(row["state"]), f"{row['total']:,}", str(row["input"]))
    _console().print(jobs_table)


@app.command()
def forget(
    name: Annotated[str, typer.Argument(help="Job name.")],
    state_dir: Path | None = _STATE_DIR,
) -> None:
    """Delete a job's local state (shard files, downloads, index). Server-side batches are left alone."""
    from openai import OpenAI

    from ratepilot.batch import BatchRunner

    with OpenAI(api_key="unused") as client, BatchRunner(client, state_dir=state_dir) as runner:
        _run_guarded(lambda: runner.forget(name))
        typer.echo(f"forgot job {name}")
