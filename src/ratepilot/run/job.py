"""``ratepilot run``: one job, end to end — validate, open the results, choose the mode, run, summarize.

1. **Validate** the whole requests file first (one streaming pass: every invalid line is collected, named by
   line and field). With invalid lines and no ``skip_invalid``, stop with :class:`RequestsFileError` before
   anything is sent and before the results file is touched.
2. **Open the results file** for this job (the job is the requests file's content): a rerun resumes, skipping
   every ``custom_id`` that already has a result; a results file of another job is refused.
3. **Choose the mode** (:func:`~.mode.choose_mode`) and run online (:class:`~.online.OnlineRunner`) or
   through the Batch pipeline (:class:`ratepilot.batch.runner.BatchRunner`, its results appended here).
4. **Summarize** (:class:`RunSummary`), with an exit code scripts can rely on (:class:`ExitCode`).

Over 500 lines, one concept: one ``ratepilot run`` job, from scan to summary (mode, lanes, online or batch, exit
code).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cache import CachePolicy, ResponseCache
from ..clock import SystemClock
from ..engine.online import OnlineRunner, OnlineStats
from ..engine.sender import HttpSender, Sender
from ..engine.window import InFlightWindow
from ..errors import InputError
from ..exitcodes import STOP_EXIT_CODES, ExitCode
from ..figures import by_code
from ..joblock import job_lock, lock_path
from ..protocol.pricing import PriceTable
from ..protocol.tokens import admission_cost, max_output_tokens
from ..protocol.usage import usage_from_body
from ..requests import InvalidLine, RequestLine, RequestsFileError, read_requests
from ..results import finished_ids, job_id_for_file, open_results, read_results, result_error_code, spent_on
from .mode import BATCH_WINDOW_S, ModeChoice, ModeName, choose_mode
from .router import DEFAULT_FLEX_ANSWER_S, TierName, TierRouter, flex_patience

log = logging.getLogger("ratepilot.run")

__all__ = ["ExitCode", "JobScan", "RunOptions", "RunSummary", "arun_job", "run_job", "scan_requests"]

MAX_REPORTED_ERRORS = 20


@dataclass
class RunOptions:
    requests: Path
    output: Path
    mode: ModeName = "online"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # default: $OPENAI_API_KEY; never in a repr
    budget_usd: float | None = None
    store: str = "memory://"  # the limiter store (memory:// | sqlite:///path | redis://host:port/db)
    cache: bool = True
    cache_path: Path | None = None  # default: <state dir>/cache.sqlite3
    cache_policy: CachePolicy = "always"  # what is cached: always | deterministic | never (ratepilot.cache)
    ordered: bool = False  # write results in input order (a reorder buffer, bounded by the in-flight window)
    skip_invalid: bool = False
    overwrite: bool = False  # start the results file afresh (even if it belongs to another job)
    deadline_s: float | None = None  # results needed within this many seconds (--mode auto, --tier auto)
    tier: TierName | None = None  # service tier of every request, or "auto": the router chooses (ratepilot.run.router)
    flex_answer_s: float = DEFAULT_FLEX_ANSWER_S  # the router's assumption of a flex answer's time, until it sees one
    max_in_flight: int = 1024  # a safety ceiling on the limiter-derived in-flight window (not a worker count)
    patience_s: float | None = None  # seconds one request may wait after rate-limit refusals (None: unbounded)
    request_timeout_s: float | None = None  # one attempt's wait for an answer (None: 600 s; flex requests 900 s)
    limiter_options: dict[str, Any] = field(default_factory=dict)  # extra Limiter(...) keyword arguments
    batch_min_requests: int = 2_000
    batch_window_s: float = BATCH_WINDOW_S  # the Batch API's completion window (a scaled simulator's is shorter)
    batch_timeout_s: float | None = None
    batch_poll_interval_s: float = 60.0  # seconds between polls of running batches
    state_dir: Path | None = None  # batch pipeline state (default: the ratepilot state dir)


@dataclass(frozen=True, slots=True)
class JobScan:
    """The validation pass: counts, invalid lines, and estimates for the mode choice."""

    total_lines: int  # non-blank lines
    valid: int
    invalid: list[InvalidLine]  # the first MAX_REPORTED_ERRORS
    invalid_count: int
    models: dict[str, int]
    urls: dict[str, int]
    estimated_cost_usd: float  # at synchronous prices, worst case (admission tokens in, max_tokens out)
    # Lines whose url differs from the first valid line's (the first MAX_REPORTED_ERRORS): a Batch job has one
    # endpoint, so such a job runs online (auto) or is refused before anything is sent (--mode batch).
    mixed_urls: list[InvalidLine] = field(default_factory=list)
    mixed_count: int = 0

    @property
    def mixed_endpoints(self) -> bool:
        return len(self.urls) > 1


class _FirstErrors(list[InvalidLine]):
    """Keeps the first few invalid lines and counts them all (memory stays bounded)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.seen = 0

    def append(self, item: InvalidLine) -> None:
        self.seen += 1
        if len(self) < self.keep:
            super().append(item)


def scan_requests(path: Path, prices: PriceTable | None = None) -> JobScan:
    """One streaming pass over the file: validate every line, count, estimate the cost."""
    prices = prices or PriceTable()
    invalid = _FirstErrors(MAX_REPORTED_ERRORS)
    models: dict[str, int] = {}
    urls: dict[str, int] = {}
    prompt_by_model: dict[str, int] = {}
    output_by_model: dict[str, int] = {}
    mixed = _FirstErrors(MAX_REPORTED_ERRORS)
    first_url: tuple[str, int] | None = None
    valid = 0
    for req in read_requests(path, invalid=invalid):
        valid += 1
        model = req.model
        models[model] = models.get(model, 0) + 1
        urls[req.url] = urls.get(req.url, 0) + 1
        if first_url is None:
            first_url = (req.url, req.line_no)
        elif req.url != first_url[0]:
            mixed.append(_mixed_url(req, first_url))
        if "embeddings" not in req.url:  # admission_cost tokenizes embeddings: too slow for a scan
            prompt_by_model[model] = prompt_by_model.get(model, 0) + admission_cost(req.url, req.body)
        output_by_model[model] = output_by_model.get(model, 0) + max_output_tokens(req.body)
    cost = sum(prices.cost(m, prompt_by_model.get(m, 0), output_by_model.get(m, 0)) for m in models)
    return JobScan(
        valid + invalid.seen, valid, list(invalid), invalid.seen, models, urls, cost, list(mixed), mixed.seen
    )


def _mixed_url(req: RequestLine, first_url: tuple[str, int]) -> InvalidLine:
    return InvalidLine(
        req.line_no,
        "url",
        f"{req.url!r} differs from {first_url[0]!r} (line {first_url[1]}); a Batch job has one endpoint: "
        "split the file by endpoint, or use --mode online",
        req.custom_id,
    )


@dataclass
class RunSummary:
    """What ``ratepilot run`` did; ``to_dict()`` is the ``--json`` output."""

    requests_file: str
    results_file: str
    mode: str
    mode_reason: str
    total: int  # valid requests in the file
    invalid_skipped: int
    already_done: int  # results present before this run (resumed)
    cache_hits: int = 0
    saved_usd: float = 0.0
    answered: int = 0  # answered by the server in this run (recorded)
    succeeded: int = 0
    http_errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)  # recorded HTTP-error results: "404 model_not_found"
    error_lines: int = 0
    unfinished: int = 0  # no answer after every retry (not recorded; rerun)
    not_started: int = 0  # left for a rerun because the job stopped
    done: int = 0  # results in the file now
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    http_requests: int = 0  # HTTP attempts (retries included), from the Pilot's ledger
    retries: int = 0
    rate_limited: int = 0  # 429 responses received
    elapsed_s: float = 0.0
    limits: dict[str, Any] = field(default_factory=dict)
    stop: str | None = None
    message: str = ""
    exit_code: int = 0
    lanes: dict[str, float] = field(default_factory=dict)  # with --tier: answers per tier, fallbacks, saving

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cost_usd"] = round(self.cost_usd, 6)
        data["saved_usd"] = round(self.saved_usd, 6)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


def _pending(path: Path, done: set[str], invalid: list[InvalidLine] | None) -> Iterator[RequestLine]:
    # The validation pass already rejected duplicates (and the job id pins the file's content): a second set
    # of every custom_id here would double the run's memory on a million-line file.
    for req in read_requests(path, invalid=invalid, check_duplicates=False):
        if req.custom_id not in done:
            yield req


def _cache(options: RunOptions) -> ResponseCache | None:
    if not options.cache or options.cache_policy == "never":
        return None
    return ResponseCache(options.cache_path, policy=options.cache_policy)


def _check_store(uri: str) -> None:
    """A limiter store URI that names no store is bad input (exit 2), found before anything is touched."""
    from ..limits.stores import check_store_uri

    try:
        check_store_uri(uri)
    except ValueError as exc:
        raise InputError(str(exc), field="store") from None


def _api_key(options: RunOptions) -> str:
    key = options.api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise InputError("no API key: pass --api-key or set OPENAI_API_KEY", field="api_key")
    return key


async def arun_job(
    options: RunOptions,
    *,
    sender: Sender | None = None,
    pilot: Any = None,
    on_progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Run one job. ``sender``/``pilot``: inject a client (tests, the demo); default: a Pilot-wrapped
    ``AsyncOpenAI`` for ``options.base_url`` / ``options.api_key``.

    Raises :class:`RequestsFileError` (bad input, nothing sent) and
    :class:`~ratepilot.results.ForeignResultsError` (the output belongs to another job); every other outcome
    is in the returned summary's ``stop`` / ``exit_code``.
    """
    started = time.monotonic()
    prices = PriceTable()
    scan = await asyncio.to_thread(scan_requests, options.requests, prices)
    if scan.invalid_count and not options.skip_invalid:
        raise RequestsFileError(str(options.requests), scan.invalid, scan.invalid_count)
    if options.mode == "batch" and scan.mixed_endpoints:
        # Named by the lines of the user's file (not of the copy the batch pipeline would make), before the
        # results file is touched or anything is sent.
        raise RequestsFileError(str(options.requests), scan.mixed_urls, scan.mixed_count)
    if sender is None:
        _api_key(options)  # a missing key is bad input too: fail before the results file is touched
        _check_store(options.store)
    if options.output.exists() and not options.output.is_file():
        # /dev/stdout would hang on its lock and fsync, /dev/full would fail every write: results need a file.
        raise InputError(f"{options.output} is not a regular file: results are appended to a file", field="output")
    job_id = await asyncio.to_thread(job_id_for_file, options.requests)
    # One owner per results file: a second run on it stops here (exit 5) before anything is sent or written.
    with job_lock(lock_path(options.output), f"results file {options.output}"):
        return await _arun_owned(options, scan, job_id, started, prices, sender, pilot, on_progress)


async def _arun_owned(
    options: RunOptions,
    scan: JobScan,
    job_id: str,
    started: float,
    prices: PriceTable,
    sender: Sender | None,
    pilot: Any,
    on_progress: Callable[[RunSummary], None] | None,
) -> RunSummary:
    """:func:`arun_job` once it owns the results file."""
    writer = open_results(
        options.output, job_id, requests=options.requests, overwrite=options.overwrite, extra={"command": "run"}
    )
    try:
        done = await asyncio.to_thread(finished_ids, options.output)
        already = len(done)
        pending = max(0, scan.valid - already)
        choice = choose_mode(
            options.mode,
            pending_requests=pending,
            estimated_cost_usd=scan.estimated_cost_usd * (pending / scan.valid if scan.valid else 0.0),
            deadline_s=options.deadline_s,
            tier=options.tier,
            window_s=options.batch_window_s,
            batch_min_requests=options.batch_min_requests,
            endpoints=tuple(scan.urls),
        )
        summary = RunSummary(
            requests_file=str(options.requests),
            results_file=str(options.output),
            mode=choice.mode,
            mode_reason=choice.reason,
            total=scan.valid,
            invalid_skipped=scan.invalid_count,
            already_done=already,
        )
        if pending == 0:
            summary.done = already
            summary.message = "nothing to do: every request already has a result"
            return summary
        if choice.mode == "batch":
            writer.close()
            await asyncio.to_thread(_run_batch, options, choice, done, job_id, summary)
        else:
            await _run_online(
                options, writer, done, summary, prices, sender=sender, pilot=pilot, on_progress=on_progress
            )
    finally:
        unwritten = writer.pending
        try:
            writer.close()
        except OSError:
            # The run already stopped for it (stop "write": the summary says so); what the writer still held
            # when closing is lost with the process, and a rerun asks those requests again.
            log.warning("ratepilot: %d result(s) could not be written to %s", unwritten, options.output)
    summary.elapsed_s = time.monotonic() - started
    return summary


async def _run_online(
    options: RunOptions,
    writer: Any,
    done: set[str],
    summary: RunSummary,
    prices: PriceTable,
    *,
    sender: Sender | None,
    pilot: Any,
    on_progress: Callable[[RunSummary], None] | None,
) -> None:
    own_pilot = None
    http: HttpSender | None = None
    if sender is None:
        from ..client import Pilot

        if pilot is None:
            from ..limits import Limiter
            from ..retry import RetryPolicy

            limiter = Limiter(store=options.store, **options.limiter_options)
            # A rate-limit refusal never abandons a request; --patience may bound the wait (RetryPolicy). Flex's
            # lack of capacity is waited out for a share of the deadline, then the router falls back.
            unavailable = 0.0 if options.tier == "auto" else flex_patience(options.deadline_s)  # auto: the router's
            retry = RetryPolicy(patience=options.patience_s, unavailable_patience=unavailable)
            # The budget belongs to the job: what its earlier runs spent (the results already on disk) counts.
            prior = spent_on(options.output, prices) if options.budget_usd is not None and done else 0.0
            pilot = own_pilot = Pilot(
                budget_usd=options.budget_usd,
                prices=prices,
                limiter=limiter,
                retry=retry,
                budget_spent_usd=prior,
            )
        base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        sender = http = HttpSender(pilot, base_url, _api_key(options), timeout_s=options.request_timeout_s)
    router = None
    if options.tier is not None:
        clock = pilot.clock if pilot is not None else SystemClock()
        deadline_at = None if options.deadline_s is None else clock.now() + options.deadline_s
        sender = router = TierRouter(
            sender,
            tier=options.tier,
            remaining=summary.total - len(done),
            clock=clock,
            deadline_at=deadline_at,
            prices=prices,
            patience=flex_patience(None),
            flex_answer_s=options.flex_answer_s,
        )
    cache = _cache(options)
    scope = str(options.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")
    runner = OnlineRunner(
        sender,
        writer,
        cache=cache,
        cache_scope=scope,
        prices=prices,
        window=InFlightWindow(ceiling=max(8, options.max_in_flight)),
        ordered=options.ordered,
        on_durable=(lambda stats: _progress(summary, stats, pilot, len(done), on_progress)) if on_progress else None,
        usage=pilot.usage if pilot is not None else None,  # the trace's retries and 429s (also behind --tier)
    )
    invalid: list[InvalidLine] | None = _FirstErrors(0) if options.skip_invalid else None  # counted by the scan
    try:
        stats = await runner.run(_pending(options.requests, done, invalid))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _fill_online(summary, runner.stats, pilot, len(done))
        summary.stop = "interrupted"
        summary.exit_code = ExitCode.INTERRUPTED
        summary.message = runner.stats.stop_message
        raise
    finally:
        if http is not None:
            await http.aclose()
        if cache is not None:
            cache.close()
        if own_pilot is not None:
            own_pilot.close()
    _fill_online(summary, stats, pilot, len(done))
    if router is not None:
        summary.lanes = router.counts.to_dict()


def _progress(
    summary: RunSummary, stats: OnlineStats, pilot: Any, already: int, callback: Callable[[RunSummary], None]
) -> None:
    _fill_online(summary, stats, pilot, already)
    summary.elapsed_s = stats.elapsed
    callback(summary)


_STOP_ADVICE = {
    "quota": "Add credit or raise the spend limit (https://platform.openai.com/settings/organization/billing), "
    "then rerun the same command: it resumes where it stopped.",
    "budget": "Raise --budget-usd and rerun the same command: it resumes where it stopped.",
    "auth": "Check the API key (--api-key or OPENAI_API_KEY), then rerun: it resumes where it stopped.",
    "hopeless": "Nothing else was sent.",
    "unreachable": "Check --base-url (or OPENAI_BASE_URL) and the network, then rerun the same command: nothing "
    "was lost.",
    "store": "Check the limiter store (--store), or run with --store memory:// (this process's limits only), then "
    "rerun the same command: it resumes where it stopped.",
    "write": "Free some space (or choose another -o), then rerun the same command: it resumes where it stopped.",
}


def _fill_online(summary: RunSummary, stats: OnlineStats, pilot: Any, already: int) -> None:
    summary.cache_hits = stats.cache_hits
    summary.saved_usd = stats.saved_usd
    summary.answered = stats.answered
    summary.succeeded = stats.succeeded
    summary.http_errors = stats.http_errors
    summary.errors_by_code = dict(stats.errors_by_code)
    summary.error_lines = stats.error_lines
    summary.unfinished = stats.unfinished
    summary.cost_usd = stats.cost_usd
    summary.prompt_tokens = stats.prompt_tokens
    summary.completion_tokens = stats.completion_tokens
    summary.done = already + stats.durable
    summary.not_started = max(0, summary.total - summary.done - stats.unfinished)
    if stats.limits is not None:
        for name, dim in (("requests", stats.limits.requests), ("tokens", stats.limits.tokens)):
            if dim is not None:
                summary.limits[name] = {"limit": dim.limit, "remaining": dim.remaining, "reset_s": dim.reset}
    if pilot is not None:
        usage = pilot.usage()
        summary.http_requests = usage.requests
        summary.retries = usage.retries
        summary.rate_limited = usage.rate_limited
    summary.stop = stats.stop
    summary.exit_code = ExitCode.OK
    summary.message = ""
    if stats.stop in STOP_EXIT_CODES:
        summary.exit_code = STOP_EXIT_CODES[stats.stop]
        summary.message = f"{stats.stop_message}\n{_STOP_ADVICE[stats.stop]}"
        if stats.unsaved:
            summary.message += (
                f"\n{stats.unsaved} answer(s) received after the first failed write could not be saved either; "
                "the rerun asks them again."
            )
    elif stats.unfinished or summary.not_started:
        summary.exit_code = ExitCode.INCOMPLETE
        summary.message = (
            f"{stats.unfinished} request(s) got no answer after every retry; rerun the same command to ask them again."
        )
        if stats.unexpected:
            summary.message += (
                f"\n{stats.unexpected} of them failed with an unexpected error (logged), first: "
                f"{stats.unexpected_message}"
            )
    elif stats.http_errors:
        # Every request has its result, but some results are HTTP errors: recorded (as the Batch API does), and
        # said in the exit code, so that a script does not take a job of 404s for a success.
        summary.exit_code = ExitCode.HTTP_ERRORS
        codes = by_code(stats.errors_by_code)
        summary.message = f"{stats.http_errors:,} result(s) are HTTP errors ({codes}): see their response.body."


def _run_batch(options: RunOptions, choice: ModeChoice, done: set[str], job_id: str, summary: RunSummary) -> None:
    """The Batch pipeline on the requests still to do; its results are appended to our results file."""
    from openai import OpenAI

    from ..batch.config import BatchConfig
    from ..batch.prepare import BatchInputError
    from ..batch.runner import BatchRunner
    from ..client import Pilot

    digest_of = hashlib.sha256()
    for req in _pending(options.requests, done, _FirstErrors(0)):
        digest_of.update(req.custom_id.encode() + b"\n")
    digest = digest_of.hexdigest()
    # The pipeline validates a copy of the pending lines: line k of the copy is line source_lines[k-1] of the
    # user's file, so an error it reports can name the user's line (4 bytes a request).
    source_lines = array("L")

    def pending_lines() -> Iterator[dict[str, Any]]:
        for req in _pending(options.requests, done, _FirstErrors(0)):
            source_lines.append(req.line_no)
            yield req.to_batch_line()

    name = f"run-{job_id.split(':')[-1][:12]}-{digest[:8]}"
    with Pilot(store=options.store, budget_usd=options.budget_usd) as pilot:
        client = pilot.wrap(OpenAI(base_url=options.base_url, api_key=_api_key(options)))
        try:
            with (
                BatchRunner(
                    client, state_dir=options.state_dir, config=BatchConfig(poll_interval=options.batch_poll_interval_s)
                ) as runner,
                tempfile.TemporaryDirectory() as tmp,
            ):
                collected = Path(tmp) / "batch-results.jsonl"
                try:
                    result = runner.run(pending_lines(), collected, name=name, timeout=options.batch_timeout_s)
                except BatchInputError as exc:
                    raise _in_user_file(exc, str(options.requests), source_lines) from None
                status = runner.status(name)
                writer = open_results(options.output, job_id, requests=options.requests)
                appended = 0
                try:
                    for line in read_results(collected):
                        if line["custom_id"] not in done:
                            writer.append(line)
                            appended += 1
                            response = line.get("response")
                            if response:
                                tokens = usage_from_body(response.get("body"))
                                if tokens is not None:
                                    summary.prompt_tokens += tokens.prompt
                                    summary.completion_tokens += tokens.completion
                            if response and 200 <= int(response.get("status_code", 0)) < 300:
                                summary.succeeded += 1
                                continue
                            if response:
                                summary.http_errors += 1
                            else:
                                summary.error_lines += 1
                            code = result_error_code(line)
                            summary.errors_by_code[code] = summary.errors_by_code.get(code, 0) + 1
                finally:
                    writer.close()
                summary.answered = appended
                summary.cost_usd = status.cost_usd
                summary.done = len(done) + appended
                summary.not_started = result.missing
                if result.missing:
                    summary.exit_code = ExitCode.INCOMPLETE
                    summary.message = (
                        f"batch job {name}: {result.missing} request(s) have no result yet; rerun to continue"
                    )
                elif summary.errors_by_code:
                    # As online: every request has its result, but some are errors; said in the exit code.
                    summary.exit_code = ExitCode.HTTP_ERRORS
                    summary.message = f"{summary.http_errors + summary.error_lines:,} result(s) are errors " + (
                        f"({by_code(summary.errors_by_code)}): see their response.body or error."
                    )
        finally:
            client.close()
            usage = pilot.usage()
            summary.http_requests = usage.requests
            summary.retries = usage.retries
            summary.rate_limited = usage.rate_limited


def _in_user_file(exc: Any, path: str, source_lines: array[int]) -> InputError:
    """A batch-pipeline input error about the copy of the pending lines, restated for the user's file."""
    if exc.reason:
        return InputError(f"{path}: {exc.reason}")

    def user_line(line_no: int) -> int:
        return source_lines[line_no - 1] if 0 < line_no <= len(source_lines) else line_no

    errors = [
        dataclasses.replace(
            e, line_no=user_line(e.line_no), message=_LINE_REF.sub(lambda m: f"line {user_line(int(m[1]))}", e.message)
        )
        for e in exc.errors
    ]
    return RequestsFileError(path, errors, exc.total_invalid)


_LINE_REF = re.compile(r"line (\d+)")


def run_job(options: RunOptions, **kwargs: Any) -> RunSummary:
    """Synchronous :func:`arun_job`."""
    return asyncio.run(arun_job(options, **kwargs))
