"""Sans-IO retry policy: given what happened, decide ``Retry(after)`` or ``GiveUp(reason)``.

Modelled on tenacity's "iter" loop, but with no sleeping, no clock and no I/O inside: the transport's sync
and async drivers describe each failed attempt as a :class:`RetryState`, call :meth:`RetryPolicy.decide`,
and do the waiting themselves. One decision engine, two thin loops.

What is retried: 429 ``rate_limit_exceeded`` / ``slow_down``, 408, 409, 5xx, timeouts and connection errors,
with exponential backoff and full jitter (``uniform(0, min(cap, base·2^(n-1)))``). When the server says how
long to wait, that wins, in this order: ``retry-after-ms``, ``retry-after``, the "Please try again in 20s"
text, and finally the ``x-ratelimit-reset-*`` headers (time for one unit of the exhausted bucket to refill).

A rate-limit refusal is never a reason to give up: it can always succeed later. ``max_attempts`` and
``max_total_wait`` count faults only (5xx, timeouts, dropped connections); refusals wait as long as it takes,
unless ``patience`` bounds the time one request may spend waiting for rate-limit capacity.

Never retried (exactly one HTTP call): ``insufficient_quota`` and the billing codes, "Request too large",
400, 401, 403, 404 and other client errors — :func:`ratepilot.protocol.errors.classify` decides the class.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .protocol.errors import ErrorClass, ErrorInfo
from .protocol.headers import RateLimitHeaders, parse_retry_after, parse_try_again_in

__all__ = [
    "Decision",
    "FailureKind",
    "GiveUp",
    "Retry",
    "RetryPolicy",
    "RetryState",
    "server_wait_hint",
]


class FailureKind(enum.Enum):
    """How an attempt failed: with an HTTP error response, or without any response at all."""

    RESPONSE = "response"
    TIMEOUT = "timeout"
    CONNECTION = "connection"


@dataclass(frozen=True, slots=True)
class RetryState:
    """Everything the policy may look at after a failed attempt.

    ``attempt`` counts attempts made so far, including the one that just failed (1 after the first), of which
    ``refusals`` were refused for a rate limit; ``waited`` is the time already spent waiting after faults, and
    ``refusal_waited`` after refusals.
    """

    attempt: int
    kind: FailureKind
    waited: float = 0.0
    error: ErrorInfo | None = None  # the classified body when kind is RESPONSE
    headers: Mapping[str, str] = field(default_factory=dict)
    refusals: int = 0
    refusal_waited: float = 0.0
    answered_before: bool = True  # the server has answered over HTTP before (False: maybe a wrong address)
    retry_faults: bool = True  # False: the request must not be sent twice (the server may have acted on it)


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after ``after`` seconds."""

    after: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop. ``exhausted`` is True when the failure was retryable but a cap was reached."""

    reason: str
    exhausted: bool = False


Decision = Retry | GiveUp


def server_wait_hint(error: ErrorInfo | None, headers: Mapping[str, str]) -> float | None:
    """How long the server asked us to wait, if it said so anywhere (seconds), else ``None``."""
    hint = parse_retry_after(headers)
    text = parse_try_again_in(error.message) if error is not None else None
    if hint is not None:
        if text is not None and text < hint < text + 1.0 and "retry-after-ms" not in headers:
            # retry-after is whole seconds (api.openai.com rounds up); the message says the same wait exactly
            # ("Please try again in 200ms"). Waiting a whole second for a 0.2 s refill wastes most of it.
            return text
        return hint
    if text is not None:
        return text
    parsed = RateLimitHeaders.parse(headers)
    # The bucket named by the error type ("requests"/"tokens") is the one that refused; otherwise take any
    # exhausted one. reset = time to refill the whole bucket, so one unit takes reset / (limit - remaining).
    order = [parsed.tokens, parsed.requests] if error is not None and error.type == "tokens" else []
    order += [parsed.requests, parsed.tokens, parsed.project_tokens]
    for dim in order:
        if dim is not None and dim.remaining == 0 and dim.reset > 0:
            return dim.reset / max(1, dim.limit - dim.remaining)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Caps and backoff shape. ``rng`` (a seeded ``random.Random`` or any ``() -> float`` in [0, 1)) makes
    the jitter reproducible in tests.

    * ``max_attempts``: attempts that may fail with a fault, the first included (8 -> up to 7 retries);
    * ``max_total_wait``: seconds of waiting after faults, summed, before giving up;
    * ``max_single_wait``: a fault's server hint longer than this gives up at once;
    * ``patience``: seconds one request may wait after rate-limit refusals, summed (``None``: as long as it
      takes; a server hint longer than what is left gives up at once, exhausted);
    * ``connect_attempts``: attempts a connection failure or a timeout gets while the server has never answered
      (nothing listening, a DNS or TLS failure, a server that never answers: most likely a wrong base URL, so
      fail in seconds, not minutes);
    * ``unavailable_patience``: seconds of waiting after faults (``waited``) within which a flex request refused
      for lack of capacity (429 "Resource Unavailable", :attr:`ErrorClass.UNAVAILABLE`) is asked again; such a
      refusal is not a rate limit (the pace is not cut) and not counted against ``max_attempts``;
    * ``base`` / ``cap``: exponential backoff ``min(cap, base·2^(n-1))``, full jitter below it.
    """

    max_attempts: int = 8
    max_total_wait: float = 600.0
    max_single_wait: float = 300.0
    base: float = 0.5
    cap: float = 30.0
    retry_timeouts: bool = True
    patience: float | None = None
    connect_attempts: int = 2
    unavailable_patience: float = 300.0
    rng: Callable[[], float] = field(default_factory=lambda: random.Random().random)

    @classmethod
    def seeded(cls, seed: int, **kwargs: object) -> RetryPolicy:
        return cls(rng=random.Random(seed).random, **kwargs)  # type: ignore[arg-type]

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in ``[0, min(cap, base·2^(attempt-1)))``."""
        ceiling = min(self.cap, self.base * (2.0 ** max(0, attempt - 1)))
        return float(self.rng()) * ceiling

    def decide(self, state: RetryState) -> Decision:
        reason = self._retryable(state)
        if isinstance(reason, GiveUp):
            return reason
        hint = server_wait_hint(state.error, state.headers) if state.kind is FailureKind.RESPONSE else None
        if state.error is not None and state.error.error_class is ErrorClass.RATE_LIMITED:
            return self._after_refusal(state, reason, hint)
        faults = state.attempt - state.refusals
        if state.error is not None and state.error.error_class is ErrorClass.UNAVAILABLE:
            # Flex out of capacity: nothing was done or billed, so it is safe to ask again — after a backoff
            # that grows to the cap (no storm), for at most unavailable_patience of waiting; then the caller
            # decides (ratepilot run's router sends it at the standard tier).
            after = hint if hint is not None and hint > 0 else self.backoff(faults)
            if state.waited + after > self.unavailable_patience:
                return GiveUp(
                    f"{reason}: still unavailable after {state.waited:.0f}s "
                    f"(unavailable_patience={self.unavailable_patience:g}s)",
                    exhausted=True,
                )
            return Retry(after, reason)
        if not state.retry_faults:
            # A 429 says the server did nothing; a fault does not (a batch may have been created before the 500).
            # The caller finds out what happened (by listing) instead of creating it again.
            return GiveUp(f"{reason}: not retried (the request must not be sent twice)", exhausted=True)
        silent = state.kind in (FailureKind.CONNECTION, FailureKind.TIMEOUT)
        if silent and not state.answered_before and faults >= self.connect_attempts:
            return GiveUp(f"{reason}, and the server has never answered ({faults} attempts)", exhausted=True)
        if faults >= self.max_attempts:
            return GiveUp(f"{faults} attempts failed (max_attempts={self.max_attempts})", exhausted=True)
        after = hint if hint is not None else self.backoff(faults)
        if hint is not None and hint > self.max_single_wait:
            return GiveUp(f"server asks to wait {hint:.1f}s (max_single_wait={self.max_single_wait}s)", True)
        if state.waited + after > self.max_total_wait:
            return GiveUp(
                f"waiting {after:.1f}s more would exceed max_total_wait={self.max_total_wait}s", exhausted=True
            )
        return Retry(after, reason)

    def _after_refusal(self, state: RetryState, reason: str, hint: float | None) -> Decision:
        """A rate-limit refusal: wait what the server asked (or back off), never give up unless out of patience."""
        # A hint of 0 ("retry-after: 0", "try again in 0s") is no hint: backing off is what keeps a server that
        # refuses at once from being asked again at once, forever.
        after = hint if hint is not None and hint > 0 else self.backoff(max(1, state.refusals))
        if self.patience is not None and state.refusal_waited + after > self.patience:
            return GiveUp(
                f"waiting {after:.1f}s more for rate-limit capacity would exceed patience={self.patience:g}s",
                exhausted=True,
            )
        return Retry(after, reason)

    def _retryable(self, state: RetryState) -> str | GiveUp:
        if state.kind is FailureKind.TIMEOUT:
            return "timeout" if self.retry_timeouts else GiveUp("timeout (retry_timeouts=False)")
        if state.kind is FailureKind.CONNECTION:
            return "connection error"
        err = state.error
        if err is None:
            return GiveUp("failed response without a status")
        if err.error_class is ErrorClass.RATE_LIMITED:
            return f"429 {err.code or 'rate limited'}"
        if err.error_class is ErrorClass.TRANSIENT:
            return f"HTTP {err.status}"
        if err.error_class is ErrorClass.UNAVAILABLE:
            return f"429 {err.code or 'unavailable'} (flex lacks capacity)"
        if err.error_class is ErrorClass.QUOTA:
            return GiveUp(f"{err.code or err.type or 'insufficient_quota'}: quota or billing; never retried")
        if err.error_class is ErrorClass.TOO_LARGE:
            return GiveUp("request too large for the token limit; never retried")
        return GiveUp(f"HTTP {err.status}{f' {err.code}' if err.code else ''}: client error; never retried")
