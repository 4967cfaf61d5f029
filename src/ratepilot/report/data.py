"""A job as the report and ``ratepilot status`` see it: its results file and trace, read once and aggregated.

Everything comes from local files, no API key needed: the results file (the truth about what was answered: counts,
failures by code with examples, tokens), its marker (which job, which requests file, hence the total), its trace
(:mod:`ratepilot.trace`: when each request ended, how long it took and waited, what it cost, and the limits the
server stated over time) and its lock file (whether a run is writing it now). Memory stays bounded: time series
are kept per second and latencies as packed floats.
"""

from __future__ import annotations

import math
import os
import socket
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from ..errors import _scrub
from ..joblock import lock_path
from ..protocol.pricing import PriceTable
from ..protocol.usage import usage_from_body
from ..results import read_marker, read_results, result_error_code
from ..trace import LimitSnapshot, RequestRecord, Segment, SegmentEnd, read_trace, trace_path

__all__ = ["FailureGroup", "JobView", "Series", "Sustained", "load_job", "percentiles"]

MAX_EXAMPLES = 3
MAX_POINTS = 600  # a chart's time axis: bins are widened so that a day-long job still draws quickly


@dataclass
class FailureGroup:
    """Results that are errors, by code: how many, and a few examples (custom_id, message)."""

    code: str
    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Series:
    """Per-bin time series. ``starts``: unix seconds of each bin; counts per bin (divide by ``bin_s`` for rates)."""

    bin_s: float
    starts: list[float]
    requests: list[int]
    tokens: list[int]
    errors: list[int]
    retries: list[int]
    rate_limited: list[int]
    cost: list[float]


class Sustained(NamedTuple):
    """A run's pace for one model: per minute, over ``span_s`` seconds; ``after_burst``: measured once its opening
    burst was spent (else over the whole run: it sent no burst to leave out)."""

    model: str
    requests_per_min: float
    tokens_per_min: float
    span_s: float
    after_burst: bool


@dataclass
class _Bin:
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    retries: int = 0
    rate_limited: int = 0
    cost: float = 0.0


@dataclass
class JobView:
    """What a job did, from its results file, marker, trace and lock (see the module doc)."""

    results: Path
    requests_file: str | None = None
    job_id: str = ""
    total: int | None = None  # requests in the requests file (None: the file is gone)
    done: int = 0  # result lines
    succeeded: int = 0
    http_errors: int = 0
    error_lines: int = 0  # results without an HTTP answer (request too large, batch expired...)
    failures: dict[str, FailureGroup] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_by_model: dict[str, float] = field(default_factory=dict)
    tokens_by_model: dict[str, tuple[int, int]] = field(default_factory=dict)  # (prompt, completion)
    cost_from: str = "results"  # "trace" (what each answer really cost, batch price included) or "results"
    # From the trace:
    has_trace: bool = False
    segments: list[Segment] = field(default_factory=list)
    ends: list[SegmentEnd] = field(default_factory=list)
    traced: int = 0  # request records (every attempt that ended, recorded or not)
    first_at: float | None = None
    last_at: float | None = None
    latencies: array[float] = field(default_factory=lambda: array("d"))  # issued -> answered, waits included
    # The last run's answers per model (cache hits not): when each ended, and its tokens, for its sustained rate.
    run_answers: dict[str, tuple[array[float], array[int]]] = field(default_factory=dict, repr=False)
    # Answers and tokens per second and model: limits are per model, so is a rate drawn against them.
    model_seconds: dict[str, dict[int, list[int]]] = field(default_factory=dict, repr=False)
    waits: array[float] = field(default_factory=lambda: array("d"))  # time waited for the limiter and retries
    limits: list[LimitSnapshot] = field(default_factory=list)
    retries: int = 0  # attempts beyond the first, over the traced requests
    rate_limited: int = 0  # 429s the client counted (from the trace's snapshots)
    cache_hits: int = 0
    per_second: dict[int, _Bin] = field(default_factory=dict, repr=False)
    running_pid: int | None = None  # a live ratepilot process holds the job (on this host)

    @property
    def cost_usd(self) -> float:
        return sum(self.cost_by_model.values())

    @property
    def modes(self) -> list[str]:
        return sorted({s.mode for s in self.segments})

    @property
    def running(self) -> bool:
        return self.running_pid is not None

    @property
    def stop(self) -> str | None:
        """Why the last run stopped (None: it finished, or is running)."""
        if not self.segments or len(self.ends) < len(self.segments):
            return None
        return self.ends[-1].stop

    @property
    def models(self) -> list[str]:
        """The models answers came from, the most answered first."""
        counts = {m: sum(b[0] for b in seconds.values()) for m, seconds in self.model_seconds.items()}
        return sorted(counts, key=lambda m: -counts[m])

    def latest_limits(self, model: str | None = None) -> LimitSnapshot | None:
        """The last limits the server stated (for ``model``; None: for any model when the job has one)."""
        if model is None:
            models = self.models
            if len(models) > 1:
                return None  # each model has its own limits: none of them is the job's
            model = models[0] if models else None
        return next(
            (s for s in reversed(self.limits) if (s.requests or s.tokens) and (model is None or s.model == model)),
            None,
        )

    def model_rates(self, model: str, starts: list[float], bin_s: float) -> tuple[list[float], list[float]]:
        """Requests/s and tokens/s of ``model`` in the bins starting at ``starts`` (see :meth:`series`)."""
        requests, tokens = [0.0] * len(starts), [0.0] * len(starts)
        if starts:
            lo = starts[0]
            for second, (r, t) in self.model_seconds.get(model, {}).items():
                i = int((second - lo) // bin_s)
                if 0 <= i < len(starts):
                    requests[i] += r / bin_s
                    tokens[i] += t / bin_s
        return requests, tokens

    def series(self, *, bin_s: float | None = None) -> Series:
        """The per-second aggregates in bins of ``bin_s`` seconds (default: wide enough for MAX_POINTS bins)."""
        keys = list(self.per_second)
        if not keys:
            return Series(1.0, [], [], [], [], [], [], [])
        lo, hi = min(keys), max(keys)
        width = bin_s or _nice_bin((hi - lo + 1) / MAX_POINTS)
        n = int((hi - lo) // width) + 1
        bins = [_Bin() for _ in range(n)]
        for k in keys:
            b, src = bins[int((k - lo) // width)], self.per_second[k]
            b.requests += src.requests
            b.tokens += src.tokens
            b.errors += src.errors
            b.retries += src.retries
            b.rate_limited += src.rate_limited
            b.cost += src.cost
        return Series(
            float(width),
            [lo + i * width for i in range(n)],
            [b.requests for b in bins],
            [b.tokens for b in bins],
            [b.errors for b in bins],
            [b.retries for b in bins],
            [b.rate_limited for b in bins],
            [b.cost for b in bins],
        )

    def sustained(self, model: str | None = None) -> Sustained | None:
        """The last run's pace for ``model`` (default: the most answered one) once its opening burst was spent;
        None when too few of its answers were timed to say.

        The server's bucket starts full: the first minute's capacity may go out at once, then the refill holds the
        pace. The burst counts as spent at the first answer that brings the run's count to 95% of the capacity
        plus what refilled since the run began (``limit × (1 + elapsed/60)``, of requests or of tokens, whichever
        comes first; 95%: the limiter keeps a margin); the pace is counted over the later two thirds of the time
        from there to the last answer (n answers, n - 1 intervals), None when that is under 2 s. A run that never
        got there (no burst: a server enforcing the minute per second, or a job below the limits) is measured over
        all its answers, with ``after_burst`` False.
        """
        models = self.models
        model = model or (models[0] if models else "")
        at, used_tokens = self.run_answers.get(model, (array("d"), array("q")))
        pairs = sorted(zip(at, used_tokens, strict=True))
        if len(pairs) < 3:
            return None
        limits = self.latest_limits(model)
        request_cap = limits.requests[0] if limits and limits.requests else 0
        token_cap = limits.tokens[0] if limits and limits.tokens else 0
        segment = self.segments[-1] if self.segments else None
        began = segment.t0 if segment is not None and segment.t0 else pairs[0][0]
        first, after_burst = 0, False
        requests = tokens = 0
        for i, (when, used) in enumerate(pairs):
            requests, tokens = requests + 1, tokens + used
            capacity = 0.95 * (1 + max(0.0, when - began) / 60)
            if (request_cap and requests >= request_cap * capacity) or (token_cap and tokens >= token_cap * capacity):
                first, after_burst = i, True
                break
        tail = pairs[first:]
        if after_burst:
            # The last of the burst (the 5% margin, what was in flight) still comes in just after: the later two
            # thirds of the time are the refill's pace alone.
            cut = tail[0][0] + (tail[-1][0] - tail[0][0]) / 3
            tail = [pair for pair in tail if pair[0] >= cut]
        if len(tail) < 3 or tail[-1][0] - tail[0][0] < 2:
            return None
        span = tail[-1][0] - tail[0][0]
        per_min = (len(tail) - 1) * 60 / span
        return Sustained(model, per_min, sum(used for _, used in tail[1:]) * 60 / span, span, after_burst)


def percentiles(values: Any, *qs: float) -> list[float]:
    """The ``qs`` quantiles (0-1) of ``values`` (nearest rank, one sort); 0.0 each when empty."""
    if not len(values):
        return [0.0 for _ in qs]
    ordered = sorted(values)
    last = len(ordered) - 1
    return [float(ordered[min(last, max(0, round(q * last)))]) for q in qs]


def _nice_bin(seconds: float) -> int:
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if seconds <= nice:
            return nice
    return int(math.ceil(seconds / 3600) * 3600)


def _count_lines(path: Path) -> int | None:
    """Non-blank lines of a requests file (its requests, invalid ones included): the job's total."""
    try:
        n = 0
        with open(path, "rb", buffering=1 << 20) as fh:
            for raw in fh:
                if raw.strip():
                    n += 1
        return n
    except OSError:
        return None


def _failure(line: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, message) of an error result (the code as every summary names it: results.result_error_code); None
    for a success."""
    response = line.get("response")
    if isinstance(response, Mapping):
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and 200 <= status < 300 and isinstance(body, dict | list):
            return None
        err = body.get("error") if isinstance(body, Mapping) else None
        message = err.get("message") if isinstance(err, Mapping) else (body if isinstance(body, str) else "")
    else:
        error = line.get("error")
        message = error.get("message") if isinstance(error, Mapping) else ""
    return result_error_code(line), str(message or "")


def _read_results(view: JobView, prices: PriceTable, batch: bool) -> None:
    for line in read_results(view.results):
        view.done += 1
        failure = _failure(line)
        if failure is None:
            view.succeeded += 1
        else:
            if line.get("response") is not None:
                view.http_errors += 1
            else:
                view.error_lines += 1
            code, message = failure
            group = view.failures.setdefault(code, FailureGroup(code))
            group.count += 1
            if len(group.examples) < MAX_EXAMPLES:
                # A server's message may quote part of a key: never shown whole.
                group.examples.append((str(line.get("custom_id", "")), _scrub(message)[:300]))
        response = line.get("response")
        body = response.get("body") if isinstance(response, Mapping) else None
        usage = usage_from_body(body)
        if usage is None or not isinstance(body, Mapping):
            continue
        model = str(body.get("model") or "")
        view.prompt_tokens += usage.prompt
        view.completion_tokens += usage.completion
        p, c = view.tokens_by_model.get(model, (0, 0))
        view.tokens_by_model[model] = (p + usage.prompt, c + usage.completion)
        cost = prices.cost(model, usage.prompt, usage.completion, usage.cached, batch=batch)
        view.cost_by_model[model] = view.cost_by_model.get(model, 0.0) + cost


def _read_trace(view: JobView) -> None:
    path = trace_path(view.results)
    if not path.exists():
        return
    cost_by_model: dict[str, float] = {}
    last_http: tuple[int, int, int, int] | None = None
    for event in read_trace(path):
        if isinstance(event, RequestRecord):
            _add_record(view, event, cost_by_model)
        elif isinstance(event, LimitSnapshot):
            view.limits.append(event)
            if event.http is not None:
                # Counters are the run's totals so far: what each snapshot adds is the difference.
                refused = event.http[2] - (last_http[2] if last_http else 0)
                last_http = event.http
                if refused > 0:
                    view.rate_limited += refused
                    view.per_second.setdefault(int(event.at), _Bin()).rate_limited += refused
        elif isinstance(event, Segment):
            view.segments.append(event)
            last_http = None
            view.run_answers = {}
        elif isinstance(event, SegmentEnd):
            view.ends.append(event)
    view.has_trace = bool(view.segments)
    # The trace knows what each answer really cost (the Batch price, cache hits free), but only for the requests it
    # saw: results appended without one (``run --mode batch``) keep the results' estimate.
    if cost_by_model and view.traced >= view.done:
        view.cost_by_model = cost_by_model
        view.cost_from = "trace"


def _add_record(view: JobView, rec: RequestRecord, cost_by_model: dict[str, float]) -> None:
    view.traced += 1
    if rec.cache_hit:  # answered locally, at no cost: not part of the job's pace against the limits
        view.cache_hits += 1
        return
    view.retries += max(0, rec.attempts - 1)
    if rec.cost:
        cost_by_model[rec.model] = cost_by_model.get(rec.model, 0.0) + rec.cost
    if rec.duration is not None:
        view.latencies.append(rec.duration)
        view.waits.append(rec.waited)
    if rec.at is None:
        return
    used = rec.prompt + rec.completion
    at, tokens = view.run_answers.setdefault(rec.model, (array("d"), array("q")))
    at.append(rec.at)
    tokens.append(used)
    per_model = view.model_seconds.setdefault(rec.model, {}).setdefault(int(rec.at), [0, 0])
    per_model[0] += 1
    per_model[1] += used
    view.first_at = rec.at if view.first_at is None else min(view.first_at, rec.at)
    view.last_at = rec.at if view.last_at is None else max(view.last_at, rec.at)
    b = view.per_second.get(int(rec.at))
    if b is None:
        b = view.per_second[int(rec.at)] = _Bin()
    b.requests += 1
    b.tokens += rec.prompt + rec.completion
    b.errors += not rec.ok
    b.retries += max(0, rec.attempts - 1)
    b.cost += rec.cost


def _holder(results: Path) -> int | None:
    """The PID of a live process holding the job's lock on this host (None: nobody, or another host).

    Read, never taken: taking the lock, even for a moment, could make a ``ratepilot run`` starting then exit 5.
    """
    try:
        info = orjson.loads(lock_path(results).read_bytes())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if host != socket.gethostname() or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def load_job(results: str | os.PathLike[str], *, prices: PriceTable | None = None) -> JobView:
    """Read a results file, its marker, trace and lock. Raises ``FileNotFoundError`` when there is neither a
    results file nor a trace."""
    path = Path(results)
    if not path.exists() and not trace_path(path).exists():
        raise FileNotFoundError(f"{path}: no such results file")
    prices = prices or PriceTable()
    view = JobView(path)
    marker = read_marker(path)
    if marker is not None:
        view.job_id = marker.job_id
        view.requests_file = marker.requests
        if marker.requests:
            view.total = _count_lines(Path(marker.requests))
    batch = bool(marker and (marker.extra.get("mode") == "batch" or marker.job_id.startswith("batch:")))
    _read_results(view, prices, batch)
    _read_trace(view)
    pid = _holder(path)
    # A live holder, and the last run's segment not ended (or none begun yet): a run is writing this job now.
    if pid is not None and len(view.ends) < max(1, len(view.segments)):
        view.running_pid = pid
    if view.total is not None:
        view.total = max(view.total, view.done)
    return view
