"""OpenAI error bodies: how the server words them, and what a client should make of them.

The simulator builds bodies with the ``*_error`` functions; the client classifies any body with
:func:`classify`. Keeping both here means the simulator's 429s are exactly the ones the client is tested on.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .headers import DimensionState, RateLimitHeaders

__all__ = [
    "BILLING_CODES",
    "ErrorClass",
    "ErrorInfo",
    "LimitKind",
    "RefusedBucket",
    "classify",
    "error_body",
    "headers_in_message",
    "insufficient_quota_error",
    "invalid_api_key_error",
    "model_not_found_error",
    "rate_limit_error",
    "redact_key",
    "refused_bucket",
    "request_too_large_error",
    "server_error",
    "slow_down_error",
]

RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"

BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
        "billing_not_active",
    }
)


class LimitKind(enum.Enum):
    """The four rate-limit windows, with the wording the server uses for each."""

    RPM = ("requests", "requests per min (RPM)", 60.0)
    TPM = ("tokens", "tokens per min (TPM)", 60.0)
    RPD = ("requests", "requests per day (RPD)", 86_400.0)
    TPD = ("tokens", "tokens per day (TPD)", 86_400.0)

    @property
    def error_type(self) -> str:
        return self.value[0]

    @property
    def phrase(self) -> str:
        return self.value[1]

    @property
    def window(self) -> float:
        return self.value[2]


def error_body(message: str, type_: str | None, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _seconds_text(seconds: float) -> str:
    # The server words waits like Go durations ("20s", "125ms", "43.2s", "6m0s"), rounded up to the
    # millisecond. Float sums leave sub-microsecond noise (4.2 s computed as 4.2000000000000455) that must not
    # add a millisecond: snap first, then hand format_duration a value its own rounding keeps on that ms.
    from .headers import format_duration

    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return format_duration(0.0)
    if ms >= 60_000:
        return format_duration(float(-(-ms // 1000)))
    return format_duration(ms / 1000 - 1e-7)


def _where(org: str, project: str | None) -> str:
    # A project's refusal names the project instead of the organization. The real wording is unconfirmed
    # (docs/simulator.md, "Project limits"); the client reads "in project" as the project's bucket.
    return f"in project {project}" if project is not None else f"in organization {org}"


def rate_limit_error(
    model: str,
    org: str,
    kind: LimitKind,
    limit: int,
    used: int,
    requested: int,
    retry_in: float,
    *,
    project: str | None = None,
) -> dict[str, Any]:
    """The 429 ``rate_limit_exceeded`` of a bucket of ``org`` or, with ``project``, of that project's."""
    msg = (
        f"Rate limit reached for {model} {_where(org, project)} on {kind.phrase}: "
        f"Limit {limit}, Used {used}, Requested {requested}. Please try again in {_seconds_text(retry_in)}. "
        f"Visit {RATE_LIMITS_URL} to learn more."
    )
    return error_body(msg, kind.error_type, "rate_limit_exceeded")


def request_too_large_error(
    model: str, org: str, kind: LimitKind, limit: int, requested: int, *, project: str | None = None
) -> dict[str, Any]:
    msg = (
        f"Request too large for {model} {_where(org, project)} on {kind.phrase}: "
        f"Limit {limit}, Requested {requested}. "
        "The input or output tokens must be reduced in order to run successfully. "
        f"Visit {RATE_LIMITS_URL} to learn more."
    )
    return error_body(msg, kind.error_type, "rate_limit_exceeded")


def slow_down_error(retry_in: float) -> dict[str, Any]:
    """The ramp-limit 429 (``slow_down``): traffic grew too fast, even if within RPM/TPM (behaviour §7)."""
    msg = (
        "Your request rate increased too quickly. Please slow down: reduce your request rate and ramp up "
        f"gradually. Please try again in {_seconds_text(retry_in)}."
    )
    return error_body(msg, "rate_limit_error", "slow_down")


def insufficient_quota_error(code: str = "insufficient_quota") -> dict[str, Any]:
    msg = (
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return error_body(msg, "insufficient_quota", code)


def redact_key(key: str) -> str:
    """``sk-...abcd``: the most of a key that may ever be shown."""
    tail = key[-4:] if len(key) >= 8 else ""
    return f"sk-...{tail}" if tail else "sk-..."


def invalid_api_key_error(key: str | None) -> dict[str, Any]:
    if not key:
        msg = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header using "
            "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return error_body(msg, "invalid_request_error", None)
    msg = (
        f"Incorrect API key provided: {redact_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return error_body(msg, "invalid_request_error", "invalid_api_key")


def model_not_found_error(model: str) -> dict[str, Any]:
    return error_body(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


def server_error(overloaded: bool = False) -> dict[str, Any]:
    if overloaded:
        msg = "That model is currently overloaded with other requests. You can retry your request."
    else:
        msg = (
            "The server had an error while processing your request. Sorry about that! You can retry your "
            "request, or contact us through our help center if the error persists."
        )
    return error_body(msg, "server_error", None)


class ErrorClass(enum.Enum):
    """What a client should do about a failed response."""

    RATE_LIMITED = "rate_limited"  # retry after the limit refills
    QUOTA = "quota"  # insufficient_quota / billing: never retry, tell the user to check billing
    TOO_LARGE = "too_large"  # one request exceeds the limit itself: never retry
    TRANSIENT = "transient"  # 408, 409, 5xx: retry with backoff
    UNAVAILABLE = "unavailable"  # flex lacks resources (a 429 that is no rate limit): back off, or change tier
    FATAL = "fatal"  # 400, 401, 403, 404, 413, 422...: never retry


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    status: int
    error_class: ErrorClass
    message: str
    type: str | None
    code: str | None
    param: str | None

    @property
    def retryable(self) -> bool:
        return self.error_class in (ErrorClass.RATE_LIMITED, ErrorClass.TRANSIENT, ErrorClass.UNAVAILABLE)


_REFUSED_BUCKET = re.compile(
    r"(in project .+? )?on (?:requests|tokens) per (?:min|day) \((RPM|TPM|RPD|TPD)\): "
    r"Limit (\d+), Used (\d+), Requested (\d+)"
)


class RefusedBucket(NamedTuple):
    """The bucket a rate-limit 429's words name: "... [in project P] on tokens per min (TPM): Limit 10000, Used
    9524, Requested 497. ..." (``project``: the key's project's bucket, not its organization's)."""

    kind: LimitKind
    project: bool
    limit: int
    used: int
    requested: int

    def state(self) -> DimensionState | None:
        """As its ``x-ratelimit-*`` headers would show it; ``None`` where the numbers cannot say (no limit, or a
        day bucket with nothing in use, which would read as a minute one)."""
        from .headers import DimensionState

        if self.limit <= 0 or (self.kind.window > 60.0 and self.used < 1):
            return None
        # A refilling bucket: full again once what is in use has refilled, at limit per window (an over-full one,
        # Used > Limit after settling, takes longer, as its reset header would say).
        window = self.kind.window
        return DimensionState(self.limit, max(0, self.limit - self.used), self.used * window / self.limit)


def refused_bucket(message: str) -> RefusedBucket | None:
    """The bucket a rate-limit 429's message names, with its numbers; ``None`` for a message in another shape."""
    m = _REFUSED_BUCKET.search(message)
    if m is None:
        return None
    return RefusedBucket(
        LimitKind[m.group(2)], m.group(1) is not None, int(m.group(3)), int(m.group(4)), int(m.group(5))
    )


def headers_in_message(message: str) -> RateLimitHeaders:
    """What a rate-limit 429's own words say of the refusing bucket, as its ``x-ratelimit-*`` headers would.

    429s arrive without headers (``openai-behaviour.md`` §7), and some models never send them on a success,
    but the message still says "on requests per min (RPM): Limit 300, Used 12, ...": the limit, and what the
    server counts in use. Only that family is set; a message in another shape gives an empty value. A project's
    refusal ("... in project proj_a on tokens per min (TPM): ...") is its ``-project-tokens`` family; a project's
    request or daily limit has no header family (and no dimension in the client's limiter): empty.
    """
    from .headers import RateLimitHeaders

    bucket = refused_bucket(message)
    state = None if bucket is None else bucket.state()
    if bucket is None or state is None:
        return RateLimitHeaders(None, None)
    if bucket.project:
        return RateLimitHeaders(None, None, project_tokens=state if bucket.kind is LimitKind.TPM else None)
    if bucket.kind.error_type == "requests":
        return RateLimitHeaders(requests=state, tokens=None)
    return RateLimitHeaders(None, state)


def _never_fits(message: str) -> bool:
    """A rate-limit message whose own numbers say the request can never be admitted (a limit of 0 for this
    model, or more requested than the whole limit)."""
    bucket = refused_bucket(message)
    return bucket is not None and (bucket.limit == 0 or bucket.requested > bucket.limit)


def classify(status: int, body: Any, headers: Mapping[str, str] | None = None) -> ErrorInfo:
    """Classify a non-2xx response from its status and (parsed JSON) body.

    ``x-should-retry`` is deliberately not consulted for billing errors: the SDK retries
    ``insufficient_quota`` because the header says nothing, and that is exactly the complaint we fix.
    """
    err: Mapping[str, Any] = {}
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        err = body["error"]
    message = str(err.get("message") or "")
    type_ = err.get("type") if isinstance(err.get("type"), str) else None
    code = err.get("code") if isinstance(err.get("code"), str) else None
    param = err.get("param") if isinstance(err.get("param"), str) else None

    if code in BILLING_CODES or type_ in BILLING_CODES:
        cls = ErrorClass.QUOTA
    elif status == 429 and (message.startswith("Request too large") or _never_fits(message)):
        cls = ErrorClass.TOO_LARGE
    elif code == "slow_down" or (status == 429 and code in (None, "rate_limit_exceeded")):
        # (older servers sent slow_down as a 503)
        cls = ErrorClass.RATE_LIMITED
    elif status == 429:
        # Another 429 (flex "Resource Unavailable", whose code is unconfirmed): not a rate limit — it must not
        # shrink the learned pace, and it is not billed — but the tier lacking capacity: back off, or fall back.
        cls = ErrorClass.UNAVAILABLE
    elif status in (408, 409) or status >= 500:
        cls = ErrorClass.TRANSIENT
    else:
        cls = ErrorClass.FATAL
    if cls in (ErrorClass.TRANSIENT, ErrorClass.FATAL) and headers is not None:
        should = (headers.get("x-should-retry") or "").lower()
        if should == "true":
            cls = ErrorClass.TRANSIENT
        elif should == "false":
            cls = ErrorClass.FATAL
    return ErrorInfo(status, cls, message, type_, code, param)
