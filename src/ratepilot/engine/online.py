"""The online runner: requests stream in, results stream out, as fast as the limits allow.

One event loop. The producer reads the next request, answers it from the cache if it can, and otherwise
starts a task for it as soon as the in-flight window (:class:`~.window.InFlightWindow`) has room; *when* the
request actually goes out is the Pilot's limiter's decision, inside the wrapped client's transport. Each
answer becomes a result line in the writer's buffer; a flusher task group-commits the buffer (one write + one
fsync per batch, in a worker thread) and only then counts those results as done — and writes their cache
rows, so the cache never holds an answer the result file lost.

Stopping: ``insufficient_quota`` (and the billing codes) and a rejected key stop the job at once (the other
tasks are cancelled; their limiter reservations are returned); the budget stops *issuing* (requests already
admitted hold budget reservations and finish). Whatever stops it, everything answered so far is durable and a
rerun resumes from there. Requests that got no answer after every retry are not recorded either, so a rerun
asks them again; requests answered with an HTTP error (400, 404...) are recorded, as the Batch API does.

Over 500 lines, one concept: the online engine's loop (admission, in-flight window, ordered writing, stops).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..cache import CacheEntry, ResponseCache, cache_key
from ..client.exchange import ATTEMPTS_HEADER, WAITED_HEADER
from ..clock import Clock, SystemClock
from ..errors import (
    BudgetExceeded,
    QuotaExhausted,
    RatePilotError,
    RequestTooLarge,
    RetriesExhausted,
    StoreUnavailable,
    _scrub,
)
from ..protocol.headers import RateLimitHeaders
from ..protocol.pricing import PriceTable, answered_tier
from ..protocol.usage import Usage, usage_from_body
from ..requests import RequestLine
from ..results import ResultWriter, error_result, marker_path, response_result, result_error_code
from ..trace import TraceWriter
from .sender import AuthFailed, Sender, TransientFailure
from .window import InFlightWindow

__all__ = ["OnlineRunner", "OnlineStats", "StopReason"]

StopReason = str  # "quota" | "budget" | "auth" | "hopeless" | "unreachable" | "store" | "write" | "interrupted"

# A job whose first answers are all the same HTTP error and nothing has succeeded (a model that does not exist, a
# base URL without /v1) stops after this many, instead of paying for every request to fail the same way.
FAIL_FAST_AFTER = 8

log = logging.getLogger(__name__)
_NO_USAGE = Usage()
# _one's line when the result is held back (see OnlineRunner._http_error); compared by identity, never written
_HELD: dict[str, Any] = {}


@dataclass
class OnlineStats:
    """What an online run did. ``durable`` results are on disk (fsynced)."""

    issued: int = 0  # requests handed to the client
    answered: int = 0  # got an HTTP answer (recorded)
    succeeded: int = 0  # ... with a 2xx status
    http_errors: int = 0  # ... with an error status (recorded, as the Batch API does)
    errors_by_code: dict[str, int] = field(default_factory=dict)  # "404 model_not_found": count (recorded ones)
    error_lines: int = 0  # recorded without an HTTP answer (request too large)
    unfinished: int = 0  # no answer after every retry: not recorded, a rerun asks again
    unexpected: int = 0  # ... of which failed with an unexpected error (logged; also counted as unfinished)
    unexpected_message: str = ""  # the first such error, key-scrubbed: the summary shows it
    unsaved: int = 0  # answers received but never written (the results file could not be written)
    cache_hits: int = 0
    saved_usd: float = 0.0
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    durable: int = 0
    started: float = field(default_factory=time.monotonic)
    first_answer_at: float | None = None
    finished: float | None = None
    limits: RateLimitHeaders | None = None  # the latest rate-limit headers seen
    model: str = ""
    stop: StopReason | None = None
    stop_message: str = ""

    clock: Clock = field(default_factory=SystemClock, repr=False, compare=False)  # the runner's

    @property
    def elapsed(self) -> float:
        return (self.finished or self.clock.now()) - self.started


class OnlineRunner:
    """Run requests through ``sender``, appending results to ``writer``. One instance per run."""

    def __init__(
        self,
        sender: Sender,
        writer: ResultWriter,
        *,
        cache: ResponseCache | None = None,
        cache_scope: str = "",
        prices: PriceTable | None = None,
        window: InFlightWindow | None = None,
        ordered: bool = False,
        flush_interval: float = 0.05,
        on_durable: Callable[[OnlineStats], None] | None = None,
        fail_fast: bool = True,
        clock: Clock | None = None,
        trace: TraceWriter | bool | None = None,
        usage: Callable[[], Any] | None = None,
    ) -> None:
        self.sender = sender
        self.writer = writer
        self.cache = cache
        self.cache_scope = cache_scope  # the base url: answers from one server never serve another
        self.prices = prices or PriceTable()
        self.window = window or InFlightWindow()
        self.ordered = ordered
        self.flush_interval = flush_interval
        self.on_durable = on_durable
        self.clock: Clock = clock or SystemClock()
        self.stats = OnlineStats(started=self.clock.now(), clock=self.clock)
        # The trace (ratepilot.trace): per-request timing and limit snapshots for `ratepilot report` / `status`.
        # None: kept for a job's results file (one with a marker), not for the Batch fallback's scratch files.
        self._trace_option = trace
        self.trace: TraceWriter | None = trace if isinstance(trace, TraceWriter) else None
        # The Pilot's counters (retries, 429s) for the trace's snapshots (None: the trace goes without them).
        self._usage = usage
        self._limits_model = ""  # the model whose answer stats.limits were parsed from
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._room = asyncio.Event()
        self._dirty = asyncio.Event()
        self._closing = False
        self._next_seq = 0
        self._held: dict[int, dict[str, Any] | None] = {}
        self._pending_cache: list[CacheEntry] = []
        # HTTP-error results held back while nothing has succeeded yet (see FAIL_FAST_AFTER): dropped if the job
        # is stopped as hopeless (so a rerun, once the cause is fixed, asks again), recorded otherwise.
        # ``fail_fast=False`` (the Batch pipeline's fallback: its stragglers are single failures, not a job) records
        # every error result at once.
        self._unproven: list[tuple[int, dict[str, Any], str]] | None = [] if fail_fast else None
        # --ordered: answers held back behind a slower earlier request. Bounded, so one request retrying for
        # minutes pauses the producer instead of growing memory without limit.
        self.max_held = 8 * self.window.ceiling

    # -- the producer -------------------------------------------------------------------------------------

    async def run(self, requests: Iterable[RequestLine]) -> OnlineStats:
        self._open_trace()
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._produce(requests)
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        except BaseException:
            self._stop("interrupted", "interrupted; everything answered so far is saved - rerun to resume")
            self._cancel_all()
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            raise
        finally:
            if self.stats.stop != "hopeless":
                self._prove()  # too few to judge, or interrupted: the held error results are recorded
            self._closing = True
            self._dirty.set()
            await asyncio.shield(flusher)
            self.stats.finished = self.clock.now()
            if self.trace is not None:
                self._snapshot(force=True)
                self.trace.close(self.stats.stop)
        return self.stats

    def _open_trace(self) -> None:
        option = self._trace_option
        if self.trace is not None or option is False:
            return
        if option is None and not marker_path(self.writer.path).exists():
            return
        try:
            self.trace = TraceWriter.open(self.writer.path, mode="online", clock=self.clock)
        except OSError as exc:
            log.warning("ratepilot: no trace for %s (%s); going on without it", self.writer.path, exc)

    async def _produce(self, requests: Iterable[RequestLine]) -> None:
        seq = 0
        for request in requests:
            if self.stats.stop:
                return
            key = cache_key(self.cache_scope + request.url, request.body) if self.cache is not None else None
            if key is not None and self._answer_from_cache(request, key, seq):
                seq += 1
                if seq % 256 == 0:
                    await asyncio.sleep(0)  # let the flusher and progress run during a run of hits
                continue
            while (self._in_flight >= self.window.size or len(self._held) > self.max_held) and not self.stats.stop:
                self._room.clear()
                await self._room.wait()
            if self.stats.stop:
                return
            self._in_flight += 1
            self.stats.issued += 1
            task = asyncio.create_task(self._one(request, seq, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            seq += 1

    def _answer_from_cache(self, request: RequestLine, key: bytes, seq: int) -> bool:
        assert self.cache is not None
        hit = self.cache.get(key)
        if hit is None:
            return False
        self.stats.cache_hits += 1
        self.stats.saved_usd += hit.cost_usd
        if self.trace is not None:
            now = self.clock.now()
            self.trace.request(
                request.custom_id, started=now, ended=now, status=200, model=request.model, cache_hit=True
            )
        self._prove()  # an answer this job's requests got before: the job can work
        self._emit(seq, response_result(request.custom_id, 200, hit.request_id, orjson.loads(hit.body)))
        return True

    # -- one request --------------------------------------------------------------------------------------

    async def _one(self, request: RequestLine, seq: int, key: bytes | None) -> None:
        line: dict[str, Any] | None = None
        started = self.clock.now()
        failed: tuple[int, str] | None = None  # (status, code) of a request that ended without an answer: traced
        try:
            answer = await self.sender.send(request)
        except asyncio.CancelledError:
            raise
        except QuotaExhausted as exc:
            failed = (429, "insufficient_quota")
            self._stop("quota", exc.message)
            self._cancel_all()
        except AuthFailed as exc:
            failed = (0, "auth")
            self._stop("auth", exc.message)
            self._cancel_all()
        except BudgetExceeded as exc:
            self._stop("budget", exc.message)  # admitted requests hold reservations: let them finish
        except RequestTooLarge as exc:
            failed = (0, "request_too_large")
            line = error_result(request.custom_id, "request_too_large", exc.message)
            self.stats.error_lines += 1
        except (RetriesExhausted, TransientFailure) as exc:
            last = exc.last_status if isinstance(exc, RetriesExhausted) else None
            failed = (last or 0, "retries_exhausted" if isinstance(exc, RetriesExhausted) else "no_answer")
            self.stats.unfinished += 1
            if self.stats.answered == 0 and _no_connection(exc):
                # Nothing has ever answered: a wrong base URL, DNS, TLS, nothing listening. Say so in seconds
                # instead of failing every request the same way.
                self._stop("unreachable", f"cannot reach {self.cache_scope or 'the API'}: {exc.message}")
                self._cancel_all()
        except StoreUnavailable as exc:
            # The shared limits cannot be read: stop now, not one store timeout per request for hours.
            failed = (0, "store_unavailable")
            self.stats.unfinished += 1
            self._stop("store", exc.message)
            self._cancel_all()
        except RatePilotError as exc:
            failed = (0, type(exc).__name__)
            self.stats.unfinished += 1
        except Exception as exc:
            # Anything else (the limiter's CostTooLarge, an invalid URL, a bug) must not end the task silently:
            # asyncio.wait never retrieves a task's exception. Log it (scrubbed: no key) and leave the request
            # unrecorded, so the job exits incomplete and a rerun asks it again.
            what = _scrub(f"{type(exc).__name__}: {exc}")
            log.error("request %s (line %d) failed unexpectedly: %s", request.custom_id, request.line_no, what)
            failed = (0, "unexpected")
            self.stats.unfinished += 1
            self.stats.unexpected += 1
            if not self.stats.unexpected_message:
                self.stats.unexpected_message = f"{request.custom_id} (line {request.line_no}): {what}"
        else:
            now = self.clock.now()
            stats = self.stats
            if stats.first_answer_at is None:
                stats.first_answer_at = now
            stats.answered += 1
            body = answer.body
            usage = usage_from_body(body) or _NO_USAGE
            prompt, completion, cached = usage.prompt, usage.completion, usage.cached
            model = request.model
            tier = answered_tier(body)  # billed by the tier that served
            cost = self.prices.cost(model, prompt, completion, cached, tier=tier) if prompt or completion else 0.0
            stats.cost_usd += cost
            stats.prompt_tokens += prompt
            stats.completion_tokens += completion
            stats.model = stats.model or model
            # The transport already fed these headers to the limiter; the window only needs a fresh view now
            # and then, so parse them for the first answers and every 8th after that (CPU per request).
            headers = None
            if stats.answered <= 32 or stats.answered % 8 == 0:
                headers = RateLimitHeaders.parse(answer.headers)
                if not headers.empty:
                    stats.limits = headers
                    self._limits_model = model
            self.window.observe(headers, now - started, prompt + completion)
            status = answer.status_code
            line = response_result(request.custom_id, status, answer.request_id, body)
            if 200 <= status < 300 and isinstance(body, dict | list):
                stats.succeeded += 1
                if key is not None:
                    raw = orjson.dumps(body)
                    self._pending_cache.append(
                        CacheEntry(key, self.cache_scope + request.url, model, answer.request_id, raw, cost)
                    )
                self._prove()
            else:
                # An HTTP error, or a 200 that is not JSON (a web server's HTML page: is the base URL right?),
                # which is no answer to an API request either: an error result, never cached.
                not_json = f"{status} not JSON" if 200 <= status < 300 else ""
                line = self._http_error(seq, line, status, body, key=not_json)
            if self.trace is not None:
                self.trace.request(
                    request.custom_id,
                    started=started,
                    ended=now,
                    status=status,
                    model=model,
                    waited=_waited(answer.headers),
                    attempts=_attempts(answer.headers),
                    error=_error_code(status, body),
                    prompt=prompt,
                    completion=completion,
                    cost=cost,
                )
        finally:
            if failed is not None and self.trace is not None:
                self.trace.request(
                    request.custom_id,
                    started=started,
                    ended=self.clock.now(),
                    status=failed[0],
                    model=request.model,
                    error=failed[1],
                )
            self._in_flight -= 1
            self._room.set()
            # A cancelled or unanswered request still occupies its place in the output order (a held-back error
            # result takes its place when it is recorded).
            if line is not _HELD:
                self._emit(seq, line)

    def _http_error(
        self, seq: int, line: dict[str, Any], status: int, body: Any, *, key: str = ""
    ) -> dict[str, Any] | None:
        """An HTTP-error answer: count it; while nothing has succeeded, hold it back (FAIL_FAST_AFTER)."""
        err = body.get("error") if isinstance(body, dict) else None
        key = key or result_error_code(line)  # "404 model_not_found": the name every summary counts errors by
        if self._unproven is None:
            self._count_error(key)
            return line
        self._unproven.append((seq, line, key))
        if len(self._unproven) < FAIL_FAST_AFTER:
            return _HELD
        if len({k for _, _, k in self._unproven}) == 1:
            message = err.get("message") if isinstance(err, dict) else (body[:120] if isinstance(body, str) else None)
            self._stop(
                "hopeless",
                f"the first {len(self._unproven)} requests all failed with HTTP {key} and none succeeded"
                + (f" ({_scrub(str(message))[:300]})" if message else "")
                + ": stopped early. Nothing of them was recorded: fix the cause (the model name, the base URL "
                "- it usually ends in /v1 -, the endpoint) and rerun the same command.",
            )
            self._cancel_all()
            return _HELD
        self._prove()  # several kinds of error: not one cause the job can be stopped for
        return _HELD

    def _prove(self) -> None:
        """Stop holding error results back: record the held ones, in their places."""
        held, self._unproven = self._unproven, None
        for seq, line, key in held or ():
            self._count_error(key)
            self._emit(seq, line)

    def _count_error(self, key: str) -> None:
        self.stats.http_errors += 1
        self.stats.errors_by_code[key] = self.stats.errors_by_code.get(key, 0) + 1

    def _emit(self, seq: int, line: dict[str, Any] | None) -> None:
        if not self.ordered:
            if line is not None:
                self.writer.append(line)
                self._dirty.set()
            return
        self._held[seq] = line
        if self._next_seq not in self._held:
            return
        while self._next_seq in self._held:
            held = self._held.pop(self._next_seq)
            self._next_seq += 1
            if held is not None:
                self.writer.append(held)
                self._dirty.set()
        self._room.set()  # the producer may be waiting for held answers to drain

    def _stop(self, reason: StopReason, message: str) -> None:
        if self.stats.stop is None:
            self.stats.stop = reason
            self.stats.stop_message = message
        self._room.set()

    def _cancel_all(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    # -- durability ---------------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if not self._closing:
                await asyncio.sleep(self.flush_interval)  # group commit: gather a batch per fsync
            self._dirty.clear()
            entries, self._pending_cache = self._pending_cache, []
            try:
                n = await asyncio.to_thread(self._sync, entries)
            except OSError as exc:
                # The results cannot be written (a full or read-only disk): stop admitting at once, keep every
                # answer received in memory (the writer keeps them), and try once more as the run closes.
                self._pending_cache[:0] = entries
                if self.stats.stop != "write":
                    self._stop("write", f"cannot write the results to {self.writer.path}: {exc.strerror or exc}")
                    self._cancel_all()
                if self._closing:
                    self.stats.unsaved = self.writer.pending
                    return
                continue
            self.stats.durable += n
            if self.trace is not None and self.trace.snapshot_due(self.clock.now()):
                self._snapshot()
            if self.on_durable is not None and n:
                self.on_durable(self.stats)
            if self._closing and not self.writer.pending and not self._pending_cache:
                return

    def _snapshot(self, *, force: bool = False) -> None:
        """The limits the server stated last, and the Pilot's counters, into the trace (at most once a second)."""
        assert self.trace is not None
        limits = self.stats.limits
        if limits is None and not force:
            return
        http = None
        if self._usage is not None:
            u = self._usage()
            http = (u.requests, u.retries, u.rate_limited, u.errors)
        req = limits.requests if limits is not None else None
        tok = limits.tokens if limits is not None else None
        self.trace.limits(
            self.clock.now(),
            self._limits_model or self.stats.model,
            (req.limit, req.remaining, req.reset) if req is not None else None,
            (tok.limit, tok.remaining, tok.reset) if tok is not None else None,
            http,
        )

    def _sync(self, entries: list[CacheEntry]) -> int:
        n = self.writer.sync()
        if self.trace is not None:
            self.trace.flush()  # with the results' chunk, in this worker thread: nothing on the event loop
        if entries and self.cache is not None:
            try:
                self.cache.put_many(entries)  # after the results they answer are durable
            except (sqlite3.Error, OSError) as exc:
                # The cache is an optimisation; the results are on disk. A full disk must not fail the job.
                log.warning("ratepilot: the response cache cannot be written (%s); going on without it", exc)
                self.cache = None
        return n


def _attempts(headers: Any) -> int:
    value = headers.get(ATTEMPTS_HEADER)
    return int(value) if value and value.isdigit() else 1


def _waited(headers: Any) -> float:
    value = headers.get(WAITED_HEADER)
    return int(value) / 1000 if value and value.isdigit() else 0.0


def _error_code(status: int, body: Any) -> str | None:
    """An HTTP-error answer's code (``model_not_found``; the status when the body names none), for the trace."""
    if 200 <= status < 300:
        return None if isinstance(body, dict | list) else "not_json"
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    return str(code) if code else str(status)


def _no_connection(exc: RatePilotError) -> bool:
    """Did this request fail without ever getting an HTTP answer (connection refused, DNS, TLS, timeouts)?"""
    if isinstance(exc, TransientFailure):
        return True
    return isinstance(exc, RetriesExhausted) and exc.last_status is None
