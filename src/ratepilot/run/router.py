"""The cheapest lane that meets the deadline: each request's service tier, chosen as it is sent.

Lanes (``openai-behaviour.md`` §7; prices in :data:`ratepilot.protocol.pricing.TIER_FACTORS`):

* **flex** (``service_tier: "flex"``): the Batch price, answers in seconds to a minute, and at times no capacity
  (429 "Resource Unavailable", unbilled);
* **standard** (``service_tier: "default"``): the full price, answers in seconds, reliable;
* **priority**: more expensive, faster; only when asked for (``--tier priority``);
* **Batch API**: the Batch price, within 24 h; chosen before the run (``--tier auto`` with a ``--deadline`` of
  24 h or more; :func:`ratepilot.run.mode.choose_mode`), not per request.

:class:`TierRouter` wraps the runner's :class:`~ratepilot.engine.sender.Sender`. With a fixed tier it sets that
tier on every request. With ``auto`` it decides per request from what it has measured: the job's best completion
rate over :attr:`TierRouter.RATE_WINDOW_S` seconds, the requests still to do and flex's answer time. A request
goes to flex while the job, at its best measured pace and with the margin, still ends before the deadline
with time for a flex answer; otherwise to standard. Flex's lack of capacity (429 "Resource Unavailable",
unbilled, never counted as a rate limit) is waited out by the router itself, with a growing backoff, for as
long as the deadline still allows the rest of the job; then the request is sent again at the standard tier.
So the job falls back to standard when, and only when, flex stays unavailable long enough to put the deadline
at risk. Without a deadline every request goes to flex and waits for it up to ``patience`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass, replace
from typing import Literal

from ..clock import Clock
from ..engine.sender import Answer, Sender
from ..errors import RetriesExhausted
from ..protocol.errors import ErrorClass, classify
from ..protocol.headers import RateLimitHeaders
from ..protocol.pricing import TIER_FACTORS, PriceTable, answered_tier, served_tier
from ..protocol.usage import usage_from_body
from ..requests import RequestLine

__all__ = [
    "DEFAULT_FLEX_ANSWER_S",
    "TIERED_URLS",
    "TIER_NAMES",
    "LaneCounts",
    "TierName",
    "TierRouter",
    "flex_patience",
]

TIERED_URLS = frozenset({"/v1/chat/completions", "/v1/responses"})
"""Endpoints that take a ``service_tier``."""

TierName = Literal["standard", "flex", "priority", "auto"]
TIER_NAMES: dict[str, str | None] = {"standard": "default", "flex": "flex", "priority": "priority", "auto": None}
"""``--tier`` value -> the ``service_tier`` sent (``auto``: the router chooses per request)."""

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
DEFAULT_FLEX_ANSWER_S = 60.0
"""What a flex answer is assumed to take before one has been seen ("seconds to a minute": the cautious end)."""


def flex_patience(deadline_s: float | None) -> float:
    """How long the Pilot waits out flex's lack of capacity for one request of ``--tier flex`` (the router, for
    ``auto``, decides by itself): a tenth of the time to the deadline, between 1 s and 5 min."""
    if deadline_s is None:
        return 300.0
    return max(1.0, min(300.0, deadline_s / 10))


@dataclass
class LaneCounts:
    """How the job's requests went: answered per tier, and the flex requests that fell back to standard."""

    flex: int = 0
    standard: int = 0
    priority: int = 0
    fell_back: int = 0  # flex stayed unavailable past the patience: sent again at the standard tier
    chose_standard: int = 0  # sent at standard from the start, because flex would have missed the deadline
    saved_usd: float = 0.0  # what the answers cost less than at the standard tier

    def to_dict(self) -> dict[str, float]:
        return {
            "flex": self.flex,
            "standard": self.standard,
            "priority": self.priority,
            "fell_back": self.fell_back,
            "chose_standard": self.chose_standard,
            "saved_usd": round(self.saved_usd, 6),
        }


class TierRouter:
    """A :class:`Sender` that sets each request's ``service_tier`` (see the module docstring).

    ``remaining``: requests of the job still to answer when the run starts. ``deadline_at``: the clock's time
    by which the job must be done (``None``: no deadline). ``margin``: the projected time to finish is
    multiplied by it before comparing with the deadline. A line that sets its own ``service_tier`` keeps it.
    """

    RATE_WINDOW_S = 20.0
    MIN_SAMPLES = 8  # probes at standard while the pace is unknown (when a deadline is set)
    MIN_SPAN_S = 2.0  # a measured rate needs this much time behind it

    def __init__(
        self,
        inner: Sender,
        *,
        tier: TierName,
        remaining: int,
        clock: Clock,
        deadline_at: float | None = None,
        margin: float = 1.5,
        flex_answer_s: float = DEFAULT_FLEX_ANSWER_S,
        prices: PriceTable | None = None,
        patience: float = 3600.0,
        seed: int | None = None,
    ) -> None:
        if tier not in TIER_NAMES:
            raise ValueError(f"tier must be one of {', '.join(TIER_NAMES)}, not {tier!r}")
        self.inner = inner
        self.tier = tier
        self.remaining = remaining
        self.clock = clock
        self.deadline_at = deadline_at
        self.margin = margin
        self.flex_answer_s = flex_answer_s  # updated from the flex answers seen (their slowest recent one)
        self.counts = LaneCounts()
        self.prices = prices or PriceTable()
        self._done: collections.deque[float] = collections.deque()  # completion times within RATE_WINDOW_S
        self._started = clock.now()
        self._flex_times: collections.deque[float] = collections.deque(maxlen=32)
        self._seen_rate: float | None = None  # best measured completions/s
        self._limit_rate: float | None = None  # what the latest x-ratelimit-limit-* headers allow, requests/s
        self._tokens_per_request = 0.0  # the answers' average usage
        self._answers = 0
        self._rng = random.Random(seed)
        self._probes = 0
        self._flex_down = 0  # flex refusals in a row (the shared backoff's exponent)
        self._flex_retry_at = 0.0  # when the requests waiting on flex look again
        self._completed = 0
        self._answered = asyncio.Event()  # set (and replaced) at every answer: wakes the requests that wait
        self.patience = patience

    async def send(self, request: RequestLine) -> Answer:
        if request.url not in TIERED_URLS:
            return await self.inner.send(request)  # embeddings, moderations...: one tier only
        own = request.body.get("service_tier")
        while not isinstance(own, str) and self._measuring():
            await self._answered.wait()  # the probes are out: decide once the pace is known
        tier = own if isinstance(own, str) else self._choose()
        sent_at = self.clock.now()
        answer: Answer | None
        if tier != "flex" or own is not None or self.tier != "auto":
            answer = await self.inner.send(_with_tier(request, tier))
            self._count(tier, answer, sent_at)
            return answer
        # Flex, chosen by the router: its lack of capacity is waited out here (the Pilot is told not to), with a
        # growing backoff, for as long as the deadline allows; then the request goes to standard.
        while True:
            answer = None
            try:
                answer = await self.inner.send(_with_tier(request, "flex"))
            except RetriesExhausted as exc:
                if not _unavailable(exc):
                    raise
            now = self.clock.now()
            if answer is not None and not _is_unavailable(answer):
                self._flex_down = 0
                self._count("flex", answer, sent_at)
                return answer
            # One backoff for every request waiting on flex (each refusal still costs a request of the rate
            # limit): they look again together, at growing intervals, instead of each at its own pace.
            if self._flex_retry_at <= now:
                self._flex_down += 1
                step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (self._flex_down - 1))
                self._flex_retry_at = now + step * (0.5 + self._rng.random() / 2)
            retry_at = self._flex_retry_at
            if not self._flex_fits(retry_at) or retry_at - sent_at > self.patience:
                break
            await self.clock.asleep(retry_at - now)
        self.counts.fell_back += 1
        answer = await self.inner.send(_with_tier(request, "default"))
        self._count("default", answer, sent_at)
        return answer

    # -- the decision ---------------------------------------------------------------------------------------

    def _measuring(self) -> bool:
        """With a deadline and no pace known yet: one request goes at standard to learn it from the rate-limit
        headers (MIN_SAMPLES, to measure it, if the answer has none); the others wait until then (a request's
        tier is decided when it is handed over, before the limiter paces it, so deciding sooner would send the
        whole job at standard)."""
        if self.tier != "auto" or self.deadline_at is None or self._rate(self.clock.now()) is not None:
            return False
        if self._probes < (1 if self._completed == 0 else self.MIN_SAMPLES):
            self._probes += 1
            return False
        return True

    def _choose(self) -> str:
        fixed = TIER_NAMES[self.tier]
        if fixed is not None:
            return fixed
        if self._flex_fits(self.clock.now()):
            return "flex"
        self.counts.chose_standard += 1
        return "default"

    def _flex_fits(self, at: float) -> bool:
        """Whether a flex answer that starts at ``at`` still leaves time, at the job's best pace, for the rest of
        the job before the deadline (always, without a deadline; never while the pace is unknown)."""
        if self.deadline_at is None:
            return True
        rate = self._rate(self.clock.now())
        if rate is None:
            return False  # a few requests at standard measure the pace: never a deadline missed for want of it
        return at + self.flex_answer_s + self.margin * self.remaining / rate <= self.deadline_at

    def _rate(self, now: float) -> float | None:
        """Requests per second the job can go at when it has to: the sustained rate the account's limits allow
        (``x-ratelimit-limit-*`` per minute, tokens at the job's average per request), or without those headers
        the best completion rate seen over RATE_WINDOW_S (counted over MIN_SPAN_S at least: a burst is not a pace).
        While flex requests wait for capacity the current rate falls, but the job could still go that fast."""
        while self._done and self._done[0] < now - self.RATE_WINDOW_S:
            self._done.popleft()
        span = min(self.RATE_WINDOW_S, now - self._started)
        if len(self._done) >= self.MIN_SAMPLES and span > 0:
            self._seen_rate = max(self._seen_rate or 0.0, len(self._done) / max(span, self.MIN_SPAN_S))
        return self._limit_rate if self._limit_rate is not None else self._seen_rate

    def _learn_limits(self, answer: Answer) -> None:
        headers = RateLimitHeaders.parse(answer.headers) if answer.headers else None
        if headers is None or headers.empty:
            return
        rates = []
        if headers.requests is not None and headers.requests.limit > 0:
            rates.append(headers.requests.limit / 60)
        if headers.tokens is not None and headers.tokens.limit > 0 and self._tokens_per_request > 0:
            rates.append(headers.tokens.limit / 60 / self._tokens_per_request)
        if rates:
            self._limit_rate = min(rates)

    def _count(self, tier: str, answer: Answer, sent_at: float) -> None:
        now = self.clock.now()
        self.remaining = max(0, self.remaining - 1)
        self._done.append(now)
        usage = usage_from_body(answer.body)
        if usage is not None:
            self._answers += 1
            self._tokens_per_request += (usage.total - self._tokens_per_request) / self._answers
        if self._limit_rate is None or self._completed % 8 == 0:  # limits change rarely: a look now and then
            self._learn_limits(answer)
        self._completed += 1
        answered, self._answered = self._answered, asyncio.Event()
        answered.set()  # the requests waiting for the pace look again
        # The tier that served it, as the answer says ("fast" is priority), else the one asked for.
        served = answered_tier(answer.body) or served_tier(tier)
        if usage is not None and served != "default":
            model = str(answer.body.get("model") or "")
            standard = self.prices.cost(model, usage.prompt, usage.completion, usage.cached)
            self.counts.saved_usd += standard * (1.0 - TIER_FACTORS.get(served, 1.0))
        if served == "flex":
            self.counts.flex += 1
            self._flex_times.append(now - sent_at)
            self.flex_answer_s = max(self._flex_times)
        elif served == "priority":
            self.counts.priority += 1
        else:
            self.counts.standard += 1


def _with_tier(request: RequestLine, tier: str) -> RequestLine:
    if request.body.get("service_tier") == tier:
        return request
    return replace(request, body={**request.body, "service_tier": tier})


def _is_unavailable(answer: Answer) -> bool:
    return answer.status_code == 429 and classify(429, answer.body).error_class is ErrorClass.UNAVAILABLE


def _unavailable(exc: RetriesExhausted) -> bool:
    info = getattr(exc, "last_info", None)
    return info is not None and info.error_class is ErrorClass.UNAVAILABLE
