"""Learning limits from the server's headers.

Algorithm (also in the README):

1. A scope with no known limits admits one request at a time (a *probe*) until a response carries
   ``x-ratelimit-*`` headers; after ``blind_after`` header-less responses it stops probing and relies on
   429 penalties alone, until a refusal names the limit (the client reads a header-less 429's words, "Limit
   300, Used 12", as the headers it lacks: :func:`ratepilot.protocol.errors.headers_in_message`).
2. Each header family (``-requests``, ``-tokens``, ``-project-tokens``) describes the *binding* window,
   a minute or a day. The window is inferred from the refill rate: ``reset × limit / (limit − remaining)``
   is the bucket's window; above 30 minutes (and with ``reset`` >= 50 ms, so millisecond rounding cannot
   fool it) it is a daily limit (RPD/TPD), otherwise a per-minute one (RPM/TPM).
3. The limit adopted is ``min(server_limit × (1 − safety_margin), ceiling)``. A changed limit is adopted at
   once, keeping the units in use.
4. The server's units in use (``max(limit − remaining, reset × limit / window)``: the reset also reveals a
   bucket settled past full) are compared with the store's own units in use *now*. (Not with its count when
   the observed request was granted: the server answers after admitting much of what was granted since, so
   that counted our own later requests as foreign traffic and the limiter drifted ~k in-flight requests
   below the server's room.) The store's count also holds requests the server has not seen yet and refunds
   it has not credited yet, so a server showing *less* in use is ignored (a downward correction could credit
   a refund twice); one showing *more* reveals traffic the limiter did not see (other processes on other
   stores, other people on the key) and its count is adopted. So the limiter never believes in more room
   than the server reports, no refill is credited for a response's age, and late or out-of-order responses
   need no special case. A server that settles the request's tokens before writing the headers (the
   simulator, for non-streamed responses) should be observed *after* ``settle``: observed first, an adopted
   count would be followed by a refund the server had already credited.
5. The unseen traffic found this way feeds a rate estimate (units/s, time constant 2 s); reservations keep
   ``foreign_horizon`` (3 s) of it free, so another client's steady use is anticipated instead of met with
   429s. Room kept free costs a one-off burst, not throughput: the bucket still refills at the full rate.
6. ``retry-after(-ms)`` and "Please try again in Ns" on a 429 block the scope for that long: the caller
   reads the wait with :func:`ratepilot.retry.server_wait_hint` and passes it to ``Limiter.refused`` (or
   ``Limiter.penalize``).
7. The burst a minute dimension may spend at once is learned too (slow start from 1 s, cut on a refusal the
   headers cannot explain, slow growth after): see :mod:`ratepilot.limits.core` and docs/limiter.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..protocol.errors import refused_bucket
from ..protocol.headers import DimensionState, RateLimitHeaders
from .core import TOL_START, DimObservation, Observation
from .types import DIM_INDEX, N_DIMS, Grant

__all__ = ["DAILY_THRESHOLD", "infer_window", "interpret", "refusal_evidence"]

_REFUSED_DIMENSION = re.compile(r"per (?:min|day) \((RPM|TPM|RPD|TPD)\)")
DAILY_THRESHOLD = 1800.0  # seconds: implied windows above this are daily
MIN_RESET_FOR_DAILY = 0.05  # below this, millisecond rounding of reset makes the inference unreliable


def infer_window(state: DimensionState) -> float:
    """The window (60 or 86400 s) a header family's numbers describe."""
    used = state.limit - state.remaining
    if used >= 1 and state.reset >= MIN_RESET_FOR_DAILY:
        implied = state.reset * state.limit / used
        if implied > DAILY_THRESHOLD:
            return 86_400.0
    return 60.0


def _dim_for(family: str, window: float) -> int:
    if family == "project-tokens":
        return DIM_INDEX["ptpm"]
    unit = "rpd" if window > 60 else "rpm"
    if family == "tokens":
        unit = "tpd" if window > 60 else "tpm"
    return DIM_INDEX[unit]


def interpret(
    headers: RateLimitHeaders,
    *,
    grant: Grant | None,
    ceiling: tuple[float, ...],
    safety_margin: float,
    answered: bool = False,
    start_burst: float = TOL_START,
) -> Observation:
    """A response's headers as an :class:`Observation` for the store. ``grant`` is the observed request's: when
    ``answered`` (a 2xx), how far ahead of the refill it was admitted widens the learned burst (None: no evidence)."""
    dims: list[DimObservation] = []
    for family, state in (
        ("requests", headers.requests),
        ("tokens", headers.tokens),
        ("project-tokens", headers.project_tokens),
    ):
        if state is None:
            continue
        window = infer_window(state) if family != "project-tokens" else 60.0
        d = _dim_for(family, window)
        # remaining is floored and cannot go below 0; reset (time until full) also shows an over-full bucket
        # (usage settled past the limit). Both round up the units in use, so the larger is the safe one.
        used = max(float(state.limit - state.remaining), state.reset * state.limit / window)
        limit = state.limit * (1.0 - safety_margin)
        if ceiling[d] > 0:
            limit = min(limit, ceiling[d])
        limit = max(limit, 1e-6)
        dims.append(DimObservation(d, limit, float(state.limit), used))
    # A success proves the server admitted this much at once: it widens the learned burst (core._grow).
    grown: tuple[float, ...] = ()
    costs: tuple[float, ...] = ()
    if answered:
        if grant is None:
            grown = costs = (0.0,) * N_DIMS
        else:
            grown = grant.used
            costs = tuple(c if on else 0.0 for c, on in zip(grant.cost.per_dimension(), grant.charged, strict=True))
    return Observation(tuple(dims), grown, costs, start_burst)


def refusal_evidence(
    message: str, error_type: str | None, headers: RateLimitHeaders | Mapping[str, str], tokens: int
) -> tuple[str, ...] | None:
    """Where a 429 ``rate_limit_exceeded`` proves a window shorter than the minute (``Limiter.refused``).

    The refusing dimension is named in the message ("... on tokens per min (TPM) ...") or, failing that, by the
    error type (``requests``/``tokens``). If the response's headers for that dimension show less room than the
    request needed, the minute bucket explains the refusal: no evidence, ``()``. If they showed room, or are
    missing, the dimension is returned. ``None``: the refusing dimension is unknown (every minute dimension).

    A project's refusal ("... in project proj_a on tokens per min (TPM) ...") is the project's TPM, ``ptpm``,
    judged against the ``-project-tokens`` headers. A project's per-minute request refusal is judged by its own
    numbers ("Limit 600, Used 12"): room in the project's minute is evidence in ``rpm`` (the scope's requests
    are the project's too), a full minute none. A project's daily limits: ``()`` (the wait still blocks).
    """
    bucket = refused_bucket(message)
    if bucket is not None:
        dim: str | None = bucket.kind.name.lower()
    else:  # a message in another shape may still name its dimension; else the error type does
        m = _REFUSED_DIMENSION.search(message)
        dim = m.group(1).lower() if m else {"requests": "rpm", "tokens": "tpm"}.get(error_type or "")
    if dim is None:
        return None
    parsed = headers if isinstance(headers, RateLimitHeaders) else RateLimitHeaders.parse(headers)
    if bucket is not None and bucket.project:
        if dim == "rpm":
            # No header reports a project's request bucket; its refusal's own numbers say whether its minute was
            # full (that explains it) or had room (a shorter window, met in the scope's requests: cut the burst).
            return () if bucket.used + bucket.requested > bucket.limit else ("rpm",)
        if dim != "tpm":
            return ()
        dim, state = "ptpm", parsed.project_tokens
    else:
        state = parsed.requests if dim in ("rpm", "rpd") else parsed.tokens
    need = 1 if dim in ("rpm", "rpd") else tokens
    return () if state is not None and state.remaining < need else (dim,)
