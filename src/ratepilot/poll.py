"""Waiting on long-running objects without burning the request budget.

Every status check is a request against the same per-minute limit as the real work, so ratepilot polls
as little as it can while still noticing completion quickly:

* a sans-IO :class:`PollSchedule` decides *when* to look next: soon at first, then a geometric back-off
  capped by the object's age; once progress is visible (a batch's ``request_counts``, a vector-store file
  batch's ``file_counts``, a fine-tuning job's ``estimated_finish``) it predicts the completion time and
  polls close to it, then at a fraction of the object's duration until it is done. The server's
  ``openai-poll-after-ms`` is a floor. A poll budget (``max_polls``) and a deadline (``timeout``) end the
  wait with :class:`WaitTimeout`, which carries the last state seen.
* :func:`wait` / :func:`wait_async` are short drivers around it: retrieve through the SDK client at low
  priority (``x-ratepilot-priority: low``, honoured and stripped by a ``pilot.wrap``-ped client), sleep on
  an injected clock, report progress. With a :class:`~ratepilot.webhooks.WebhookReceiver` they sleep until
  the object's webhook arrives and make one confirming retrieve instead of polling.

Over 500 lines, one concept: waiting on a long-running object — the pure schedule and its two thin drivers (sync,
async) belong together.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import openai

from .client.plan import PRIORITY_HEADER  # read and stripped by the transport
from .clock import Clock, SystemClock
from .errors import RatePilotError, RetriesExhausted

if TYPE_CHECKING:
    from .webhooks import WebhookReceiver

__all__ = [
    "KINDS",
    "PRIORITY_HEADER",
    "Finished",
    "ObjectKind",
    "Poll",
    "PollPolicy",
    "PollSchedule",
    "Snapshot",
    "StopPolling",
    "WaitProgress",
    "WaitTimeout",
    "kind_of",
    "snapshot",
    "wait",
    "wait_async",
]

POLL_AFTER_HEADER = "openai-poll-after-ms"


class WaitTimeout(RatePilotError, TimeoutError):
    """The object did not reach a terminal status within the deadline or the poll budget.

    ``last`` is the most recent object seen (the SDK model, or what was passed in if nothing was
    retrieved), so the caller can report progress or decide to wait again.
    """

    def __init__(self, message: str, *, last: Any, polls: int, elapsed: float, reason: str) -> None:
        super().__init__(message)
        self.last = last
        self.polls = polls
        self.elapsed = elapsed
        self.reason = reason  # "timeout" | "max_polls"


# --------------------------------------------------------------------------------------------- object kinds


@dataclass(frozen=True, slots=True)
class ObjectKind:
    """One kind of long-running object: its ``object`` field, terminal statuses and webhook event prefix."""

    object: str
    terminal: frozenset[str]
    event_prefix: str | None  # webhook events announcing its end, e.g. "batch." (None: it has no webhooks)
    id_prefix: str  # how its ids start, to accept a bare id
    not_started: frozenset[str] = frozenset()  # statuses before work begins (validating, queued)


KINDS: Mapping[str, ObjectKind] = {
    k.object: k
    for k in (
        ObjectKind(
            "batch",
            frozenset({"completed", "failed", "expired", "cancelled"}),
            "batch.",
            "batch_",
            frozenset({"validating"}),
        ),
        ObjectKind(
            "response",
            frozenset({"completed", "failed", "cancelled", "incomplete"}),
            "response.",
            "resp_",
            frozenset({"queued"}),
        ),
        # requires_action is terminal for a poller: the run waits for the caller's tool outputs.
        ObjectKind(
            "thread.run",
            frozenset({"requires_action", "cancelled", "completed", "failed", "expired", "incomplete"}),
            None,
            "run_",
            frozenset({"queued"}),
        ),
        ObjectKind("vector_store.file", frozenset({"completed", "failed", "cancelled"}), None, "file-"),
        ObjectKind("vector_store.file_batch", frozenset({"completed", "failed", "cancelled"}), None, "vsfb_"),
        ObjectKind(
            "fine_tuning.job",
            frozenset({"succeeded", "failed", "cancelled"}),
            "fine_tuning.job.",
            "ftjob-",
            frozenset({"validating_files", "queued"}),
        ),
    )
}


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def kind_of(obj: Any) -> ObjectKind:
    """The kind of an SDK object (or dict) from its ``object`` field, else from its id's prefix."""
    tag = obj if isinstance(obj, str) else _field(obj, "object")
    if isinstance(tag, str) and tag in KINDS:
        return KINDS[tag]
    ident = obj if isinstance(obj, str) else _field(obj, "id")
    if isinstance(ident, str):
        for k in KINDS.values():
            if ident.startswith(k.id_prefix) and k.object != "vector_store.file":
                return k
    raise ValueError(
        f"cannot wait on {type(obj).__name__} {ident!r}: expected a batch, response, thread.run, "
        "vector_store.file, vector_store.file_batch or fine_tuning.job (object or id)"
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a poll learnt about an object, reduced to what scheduling needs (wall times are unix seconds)."""

    id: str
    status: str | None
    done: int | None = None  # finished units of work (completed + failed requests or files)
    total: int | None = None
    created_at: float | None = None
    started_at: float | None = None  # when work began (in_progress_at / started_at)
    estimated_finish: float | None = None  # a server-given ETA (fine-tuning jobs)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def snapshot(kind: ObjectKind, obj: Any) -> Snapshot:
    """Extract status, progress counters and timestamps from an object of ``kind`` (pure)."""
    if isinstance(obj, str):
        return Snapshot(id=obj, status=None)
    done = total = None
    counts = _field(obj, "request_counts") if kind.object == "batch" else None
    if kind.object == "vector_store.file_batch":
        counts = _field(obj, "file_counts")
    if counts is not None:
        total_v = _field(counts, "total")
        if isinstance(total_v, int) and total_v > 0:
            total = total_v
            done = sum(int(_field(counts, n) or 0) for n in ("completed", "failed", "cancelled"))
    status = _field(obj, "status")
    return Snapshot(
        id=str(_field(obj, "id")),
        status=str(status) if status is not None else None,
        done=done,
        total=total,
        created_at=_num(_field(obj, "created_at")),
        started_at=_num(_field(obj, "in_progress_at")) or _num(_field(obj, "started_at")),
        estimated_finish=_num(_field(obj, "estimated_finish")),
    )


# ------------------------------------------------------------------------------------------- the schedule


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How eagerly to poll. The defaults meet: <= 15 polls for a 1 h batch, noticed within 5% of its duration.

    * ``first_poll``: delay before the first check of an object not yet seen terminal.
    * ``backoff``: growth factor of the interval while the object has not started work (validating, queued):
      it cannot finish from there, so looking rarely costs little.
    * ``blind_fraction``: running without visible progress, the interval is capped at this fraction of the
      object's age (a geometric back-off of factor 1 + blind_fraction), so the detection delay stays
      proportional to how long the object has been running; but never below ``blind_floor`` (a young object
      would otherwise be looked at every second).
    * ``precision``: with a predicted completion, the target detection delay as a fraction of the predicted
      duration (the interval used around and after the predicted end).
    * ``approach``: fraction of the remaining time to sleep before re-estimating, while far from the end.
    * ``min_interval`` / ``max_interval``: hard bounds of any interval (the server's poll-after hint is a floor).
    * ``max_failures``: consecutive transient retrieve failures (connection errors, 5xx) tolerated, each retried
      after a back-off, before the error is raised: an hour-long wait should survive a network blip.
    """

    first_poll: float = 1.0
    backoff: float = 2.0
    blind_fraction: float = 0.25
    blind_floor: float = 5.0
    precision: float = 0.03
    approach: float = 0.8
    min_interval: float = 1.0
    max_interval: float = 1800.0
    max_failures: int = 5

    def __post_init__(self) -> None:
        if not (self.first_poll >= 0 and self.backoff >= 1 and self.blind_fraction > 0 and self.blind_floor >= 0):
            raise ValueError(f"invalid PollPolicy {self}")
        if not 0 < self.precision < 1:
            raise ValueError(f"invalid PollPolicy {self}")
        if not (0 < self.approach < 1 and 0 <= self.min_interval <= self.max_interval):
            raise ValueError(f"invalid PollPolicy {self}")


@dataclass(frozen=True, slots=True)
class Poll:
    """Retrieve the object after ``after`` seconds; with ``wake_on_event`` a webhook for it may cut the wait short.

    ``after`` is ``math.inf`` when waiting for a webhook with no deadline.
    """

    after: float
    wake_on_event: bool = False


@dataclass(frozen=True, slots=True)
class Finished:
    """The object reached a terminal status."""


@dataclass(frozen=True, slots=True)
class StopPolling:
    """Stop waiting: ``reason`` is "timeout", "max_polls" or "errors"; ``message`` says it for a person."""

    reason: str
    message: str


PollDecision = Poll | Finished | StopPolling


@dataclass(frozen=True, slots=True)
class WaitProgress:
    """Reported to ``on_progress`` after every retrieve."""

    id: str
    kind: str
    status: str | None
    done: int | None
    total: int | None
    polls: int  # status checks made so far (a webhook's confirming retrieve is not counted)
    retrieves: int  # every GET made, confirming retrieves included
    elapsed: float  # seconds since the wait began
    eta: float | None  # predicted seconds until the object finishes, when progress allows a prediction
    next_poll: float | None  # seconds until the next check (None when finished or giving up)


@dataclass
class PollSchedule:
    """The polling decisions for one object, free of I/O: feed it observations, it answers with a decision.

    Times: ``now`` is the clock's monotonic seconds, ``wall`` its unix seconds (objects carry unix
    timestamps; ``wall - now`` converts them). ``webhooks=True`` means a receiver will announce the object's
    end: then the schedule asks to sleep until an event (or the deadline) and retrieve once to confirm.
    """

    kind: ObjectKind
    started: float
    wall_offset: float
    policy: PollPolicy = field(default_factory=PollPolicy)
    timeout: float | None = None
    max_polls: int | None = None
    webhooks: bool = False
    polls: int = 0
    retrieves: int = 0
    last: Snapshot | None = None
    eta: float | None = None  # predicted completion, clock seconds
    failures: int = 0  # consecutive transient retrieve failures
    _interval: float = 0.0
    _samples: list[tuple[float, int]] = field(default_factory=list)  # (now, done) while in progress

    @classmethod
    def begin(
        cls,
        kind: ObjectKind,
        *,
        now: float,
        wall: float,
        policy: PollPolicy | None = None,
        timeout: float | None = None,
        max_polls: int | None = None,
        webhooks: bool = False,
    ) -> PollSchedule:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0")
        if max_polls is not None and max_polls < 0:
            raise ValueError("max_polls must be >= 0")
        return cls(
            kind=kind,
            started=now,
            wall_offset=wall - now,
            policy=policy or PollPolicy(),
            timeout=timeout,
            max_polls=max_polls,
            webhooks=webhooks and kind.event_prefix is not None,
        )

    # -- public decisions

    def start(self, snap: Snapshot, now: float) -> PollDecision:
        """The first decision, from the object the caller already holds (no request made for it)."""
        self.last = snap
        if self._terminal(snap):
            return Finished()
        if snap.status is None and not self.webhooks:  # only an id: look at once
            return self._bounded(0.0, now)
        self._learn(snap, now)
        return self._next(now, first=True, poll_after=None)

    def observe(
        self, snap: Snapshot, now: float, *, poll_after: float | None = None, woken: bool = False
    ) -> PollDecision:
        """Record one retrieve (made at ``now``) and decide what comes next.

        ``poll_after`` is the server's ``openai-poll-after-ms`` in seconds; ``woken`` says the retrieve
        followed a webhook for the object (in webhook mode) rather than the deadline.
        """
        self.retrieves += 1
        self.failures = 0
        if not self.webhooks:
            self.polls += 1
        self.last = snap
        if self._terminal(snap):
            return Finished()
        self._learn(snap, now)
        return self._next(now, first=False, poll_after=poll_after, woken=woken)

    def failed(self, now: float) -> PollDecision:
        """A retrieve failed transiently (connection error, 5xx): look again after a back-off, or give up.

        The attempt counts as a poll (it was a request). ``StopPolling("errors")`` tells the driver to re-raise.
        """
        self.retrieves += 1
        self.failures += 1
        if not self.webhooks:
            self.polls += 1
        if self.failures > self.policy.max_failures:
            return StopPolling("errors", f"{self.failures} retrieves in a row failed")
        if self.max_polls is not None and self.polls >= self.max_polls:
            return StopPolling("max_polls", f"poll budget of {self.max_polls} polls exhausted")
        delay = min(self.policy.first_poll * 2**self.failures, 60.0, self.policy.max_interval)
        return self._bounded(max(delay, self.policy.min_interval), now, after_failure=True)

    def progress(self, now: float, decision: PollDecision) -> WaitProgress:
        snap = self.last or Snapshot(id="", status=None)
        return WaitProgress(
            id=snap.id,
            kind=self.kind.object,
            status=snap.status,
            done=snap.done,
            total=snap.total,
            polls=self.polls,
            retrieves=self.retrieves,
            elapsed=now - self.started,
            eta=None if self.eta is None else max(0.0, self.eta - now),
            next_poll=decision.after if isinstance(decision, Poll) and math.isfinite(decision.after) else None,
        )

    # -- internals

    def _terminal(self, snap: Snapshot) -> bool:
        return snap.status is not None and snap.status in self.kind.terminal

    def _to_clock(self, wall_ts: float) -> float:
        return wall_ts - self.wall_offset

    def _origin(self) -> float:
        """When the object began, in clock seconds: its created_at if known (and not in our future)."""
        snap = self.last
        if snap is not None and snap.created_at is not None:
            return min(self.started, self._to_clock(snap.created_at))
        return self.started

    def _learn(self, snap: Snapshot, now: float) -> None:
        """Update the completion estimate from progress counters or a server ETA."""
        if snap.estimated_finish is not None:
            self.eta = self._to_clock(snap.estimated_finish)
            return
        if snap.status == "finalizing" or (snap.done is not None and snap.total and snap.done >= snap.total):
            # All work is done; only the server's finalizing step is left: "any moment now".
            self.eta = now if self.eta is None else min(self.eta, now)
            return
        if snap.done is None or not snap.total:
            self.eta = None
            return
        if snap.done > 0 and snap.status in (None, "in_progress"):
            # Only samples taken while work visibly advances: one taken before work began would make the
            # rate look slower than it is, and the poll land late.
            self._samples.append((now, snap.done))
        rate = self._rate(snap, now)
        self.eta = None if rate is None else now + (snap.total - snap.done) / rate

    def _rate(self, snap: Snapshot, now: float) -> float | None:
        """Units of work per second: from our own samples (no clock skew) or else from ``started_at``."""
        if len(self._samples) >= 2:
            (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
            if t1 > t0 and d1 > d0:
                return (d1 - d0) / (t1 - t0)
        if snap.started_at is not None and snap.done:
            ran = now - self._to_clock(snap.started_at)
            if ran > 0:
                return snap.done / ran
        return None

    def _approach(self) -> float:
        """How far towards the predicted end to jump: less when the estimate rests on little progress.

        A rate measured from n finished units can be off by about 1/n (the unit in progress is invisible), so
        after one unit go half way, after four or more the policy's full ``approach``.
        """
        if self.last is None or self.last.estimated_finish is not None or not self._samples:
            return self.policy.approach
        units = self._samples[-1][1] - (self._samples[0][1] if len(self._samples) > 1 else 0)
        return min(self.policy.approach, units / (units + 1))

    def _next(self, now: float, *, first: bool, poll_after: float | None, woken: bool = False) -> PollDecision:
        p = self.policy
        if self.webhooks:
            if woken or self._interval > 0:
                # The event said "finished" but the retrieve does not show it yet (the API is eventually
                # consistent): confirm again shortly, backing off. The event will not come a second time.
                self._interval = p.first_poll if self._interval == 0 else self._interval * p.backoff
                return self._bounded(min(self._interval, p.max_interval), now)
            # No polling at all: sleep until the webhook (or the deadline), then one confirming retrieve.
            return self._bounded(math.inf, now, wake_on_event=True)
        if self.max_polls is not None and self.polls >= self.max_polls:
            return StopPolling("max_polls", f"poll budget of {self.max_polls} polls exhausted")
        if self.eta is not None:
            duration = max(self.eta - self._origin(), 0.0)
            guard = min(max(p.precision * max(duration, now - self._origin()), p.min_interval), p.max_interval)
            remaining = self.eta - now
            approach = self._approach()
            if remaining <= 0:
                delay = guard  # overdue (finalizing, or the estimate was early): short, bounded checks
            elif remaining * (1 - approach) <= guard:
                delay = remaining  # close enough: land a poll on the predicted end
            else:
                delay = approach * remaining  # far off: look again on the way and re-estimate
        else:
            age = max(now - self._origin(), 0.0)
            waiting = self.last is not None and self.last.status in self.kind.not_started
            if first or self._interval == 0:
                self._interval = p.first_poll
            else:
                self._interval = max(self._interval * p.backoff, p.min_interval)
            delay = self._interval
            if not waiting and not first:
                delay = min(delay, max(p.blind_fraction * age, p.blind_floor, p.min_interval))
                self._interval = delay  # back off from here, not from a value the cap hid
        delay = min(delay, p.max_interval)
        if poll_after is not None:
            delay = max(delay, poll_after)  # the server asked us not to look sooner
        return self._bounded(delay, now)

    def _bounded(
        self, delay: float, now: float, *, wake_on_event: bool = False, after_failure: bool = False
    ) -> PollDecision:
        """Clip a delay to the deadline; at the deadline, give up (the last look has just been taken)."""
        if self.timeout is not None:
            deadline = self.started + self.timeout
            known = self.last is not None and self.last.status is not None
            if now >= deadline and (known or self.retrieves > 0 or after_failure):
                return StopPolling("timeout", f"not finished after {self.timeout:g}s")
            delay = min(delay, max(deadline - now, 0.0))
        return Poll(after=delay, wake_on_event=wake_on_event)


# ------------------------------------------------------------------------------------------------ drivers

ProgressCallback = Callable[[WaitProgress], object]


@dataclass(frozen=True, slots=True)
class _Target:
    kind: ObjectKind
    id: str
    args: dict[str, str]  # extra path parameters of the retrieve call (thread_id, vector_store_id)


def _target(obj: Any, kind: ObjectKind) -> _Target:
    ident = obj if isinstance(obj, str) else _field(obj, "id")
    if not isinstance(ident, str) or not ident:
        raise ValueError("cannot wait on an object without an id")
    args: dict[str, str] = {}
    need = {
        "thread.run": "thread_id",
        "vector_store.file": "vector_store_id",
        "vector_store.file_batch": "vector_store_id",
    }
    name = need.get(kind.object)
    if name is not None:
        value = None if isinstance(obj, str) else _field(obj, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"waiting on a {kind.object} needs the object itself (its {name}), not only its id")
        args[name] = value
    return _Target(kind=kind, id=ident, args=args)


def _retrieve_method(client: Any, kind: ObjectKind) -> Any:
    """The ``with_raw_response.retrieve`` of the right resource (same path on OpenAI and AsyncOpenAI)."""
    resource = {
        "batch": lambda: client.batches,
        "response": lambda: client.responses,
        "thread.run": lambda: client.beta.threads.runs,
        "vector_store.file": lambda: client.vector_stores.files,
        "vector_store.file_batch": lambda: client.vector_stores.file_batches,
        "fine_tuning.job": lambda: client.fine_tuning.jobs,
    }[kind.object]()
    return resource.with_raw_response.retrieve


def _call_retrieve(client: Any, target: _Target) -> Any:
    """Start one retrieve at low priority; returns the raw response (sync) or an awaitable of it (async)."""
    method = _retrieve_method(client, target.kind)
    with warnings.catch_warnings():
        # The Assistants API is deprecated in the SDK; waiting on an existing run is still legitimate.
        warnings.simplefilter("ignore", DeprecationWarning)
        return method(target.id, **target.args, extra_headers={PRIORITY_HEADER: "low"})


# Failures a later look can get past: the network, timeouts, the server's 5xx, and a wrapped client's retries
# running out on those. Anything else (404, auth, quota, budget) is raised at once.
_TRANSIENT: tuple[type[BaseException], ...] = (
    openai.APIConnectionError,
    openai.InternalServerError,
    RetriesExhausted,
)


def _poll_after(raw: Any) -> float | None:
    value = raw.headers.get(POLL_AFTER_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value) / 1000
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _begin(
    obj: Any,
    clock: Clock,
    timeout: float | None,
    max_polls: int | None,
    receiver: WebhookReceiver | None,
    policy: PollPolicy | None,
) -> tuple[_Target, PollSchedule, PollDecision]:
    kind = kind_of(obj)
    target = _target(obj, kind)
    now = clock.now()
    schedule = PollSchedule.begin(
        kind,
        now=now,
        wall=clock.wall(),
        policy=policy,
        timeout=timeout,
        max_polls=max_polls,
        webhooks=receiver is not None,
    )
    return target, schedule, schedule.start(snapshot(kind, obj), now)


def _timeout_error(schedule: PollSchedule, give_up: StopPolling, last: Any, now: float) -> WaitTimeout:
    snap = schedule.last
    state = f"status {snap.status!r}" if snap is not None and snap.status else "status unknown"
    if snap is not None and snap.total:
        state += f", {snap.done}/{snap.total} done"
    return WaitTimeout(
        f"{schedule.kind.object} {snap.id if snap else '?'} not finished: {give_up.message} ({state}, "
        f"{schedule.polls} polls)",
        last=last,
        polls=schedule.polls,
        elapsed=now - schedule.started,
        reason=give_up.reason,
    )


def _missed(schedule: PollSchedule, clock: Clock, error: BaseException) -> Poll | Finished | StopPolling:
    """A poll that failed transiently: back off, or raise ``error`` once too many failed in a row."""
    decision = schedule.failed(clock.now())
    if isinstance(decision, StopPolling) and decision.reason == "errors":
        raise error
    return decision


def _observed(
    schedule: PollSchedule, target: Any, raw: Any, woken: bool, clock: Clock, on_progress: ProgressCallback | None
) -> tuple[Any, Poll | Finished | StopPolling]:
    """What a successful retrieve says: the latest object and the schedule's next decision (both drivers)."""
    latest = raw.parse()
    now = clock.now()
    decision = schedule.observe(snapshot(target.kind, latest), now, poll_after=_poll_after(raw), woken=woken)
    if on_progress is not None:
        on_progress(schedule.progress(now, decision))
    return latest, decision


def wait(
    client: Any,
    obj: Any,
    *,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    max_polls: int | None = None,
    receiver: WebhookReceiver | None = None,
    policy: PollPolicy | None = None,
    clock: Clock | None = None,
) -> Any:
    """Block until ``obj`` (an SDK object or id) reaches a terminal status; return its latest version.

    ``client`` is an ``OpenAI`` client, ideally ``pilot.wrap``-ped so polls go through the limiter at low
    priority. ``timeout`` (seconds) and ``max_polls`` bound the wait (:class:`WaitTimeout` carries the last
    object). With ``receiver`` (a :class:`~ratepilot.webhooks.WebhookReceiver` receiving this account's
    webhooks) no polls are made: the wait sleeps until the object's event and confirms with one retrieve.
    """
    clock = clock or SystemClock()
    target, schedule, decision = _begin(obj, clock, timeout, max_polls, receiver, policy)
    subscription = receiver.subscribe(target.id) if receiver is not None and schedule.webhooks else None
    latest = obj
    try:
        while True:
            if isinstance(decision, Finished):
                return latest
            if isinstance(decision, StopPolling):
                raise _timeout_error(schedule, decision, latest, clock.now())
            woken = False
            if subscription is not None and decision.wake_on_event:
                woken = subscription.wait(None if math.isinf(decision.after) else decision.after, clock)
            elif decision.after > 0:
                clock.sleep(decision.after)
            try:
                raw = _call_retrieve(client, target)
            except _TRANSIENT as exc:
                decision = _missed(schedule, clock, exc)
                continue
            latest, decision = _observed(schedule, target, raw, woken, clock, on_progress)
    finally:
        if subscription is not None:
            subscription.close()


async def wait_async(
    client: Any,
    obj: Any,
    *,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    max_polls: int | None = None,
    receiver: WebhookReceiver | None = None,
    policy: PollPolicy | None = None,
    clock: Clock | None = None,
) -> Any:
    """:func:`wait` for an ``AsyncOpenAI`` client (same decisions, awaited sleeps and retrieves)."""
    clock = clock or SystemClock()
    target, schedule, decision = _begin(obj, clock, timeout, max_polls, receiver, policy)
    subscription = receiver.subscribe(target.id) if receiver is not None and schedule.webhooks else None
    latest = obj
    try:
        while True:
            if isinstance(decision, Finished):
                return latest
            if isinstance(decision, StopPolling):
                raise _timeout_error(schedule, decision, latest, clock.now())
            woken = False
            if subscription is not None and decision.wake_on_event:
                woken = await subscription.wait_async(None if math.isinf(decision.after) else decision.after, clock)
            elif decision.after > 0:
                await clock.asleep(decision.after)
            try:
                raw = await cast(Awaitable[Any], _call_retrieve(client, target))
            except _TRANSIENT as exc:
                decision = _missed(schedule, clock, exc)
                continue
            latest, decision = _observed(schedule, target, raw, woken, clock, on_progress)
    finally:
        if subscription is not None:
            subscription.close()
