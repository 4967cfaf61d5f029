"""The simulator's configuration: limits, models, pools, keys, credit, prices, latency, faults.

Built from keyword arguments (``SimConfig(rpm=3, tpm=10_000)``), CLI flags, or a TOML file
(:meth:`SimConfig.from_toml`). Every limit is optional: ``None`` means "no limit on this dimension".
Resolution order for a model's limits: its pool's limits, then the model's own, then the top-level ones.

Over 500 lines, one concept: the simulator's configuration — its fields, their validation, the TOML format and the
presets.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..protocol.errors import BILLING_CODES
from ..protocol.pricing import ModelPrice, PriceTable

__all__ = [
    "DEFAULT_MODELS",
    "PRESETS",
    "REALISTIC",
    "ConfigError",
    "FaultConfig",
    "KeySpec",
    "LatencyConfig",
    "Limits",
    "ModelSpec",
    "PoolSpec",
    "Responder",
    "SimConfig",
]

Responder = Callable[[str, Mapping[str, Any]], str]
"""A Python responder: ``(endpoint, body) -> reply text``."""


class ConfigError(ValueError):
    """A bad simulator configuration; the message names the offending field (and file)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-organization limits for one model or pool; ``None`` = unlimited on that dimension."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None

    def merged_over(self, base: Limits) -> Limits:
        """These limits where set, ``base``'s elsewhere."""
        return Limits(
            rpm=self.rpm if self.rpm is not None else base.rpm,
            tpm=self.tpm if self.tpm is not None else base.tpm,
            rpd=self.rpd if self.rpd is not None else base.rpd,
            tpd=self.tpd if self.tpd is not None else base.tpd,
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the simulator serves. ``kind`` is ``chat`` (chat/responses/completions) or ``embedding``."""

    id: str
    kind: str = "chat"
    context_window: int = 128_000
    dimensions: int = 1536  # embeddings only: the default vector length
    limits: Limits = Limits()
    owned_by: str = "system"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """Models that share one set of buckets (as some model families do on the real API)."""

    name: str
    models: tuple[str, ...]
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A configured API key: the organization (and project) it belongs to."""

    org: str
    project: str | None = None


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    """Response time = ``base_ms + per_token_ms × output tokens``, times ``1 ± jitter`` (seeded).

    With everything zero the server never awaits a timer on the request path.
    """

    base_ms: float = 0.0
    per_token_ms: float = 0.0
    jitter: float = 0.0  # fraction, e.g. 0.2 = ±20 %

    @property
    def zero(self) -> bool:
        return self.base_ms <= 0 and self.per_token_ms <= 0


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Injected faults, each a probability in [0, 1] drawn from one seeded RNG.

    * ``error_500`` / ``error_503``: a server error instead of the response (the request still counts);
    * ``drop``: the connection is closed mid-response (headers and part of the body sent);
    * ``stall``: the response is withheld for ``stall_s`` seconds (to trigger client timeouts);
    * ``missing_headers``: the ``x-ratelimit-*`` headers are omitted from a successful response (1.0 = always);
    * ``unknown_token_headers``: a successful response's ``x-ratelimit-*-tokens`` headers all read ``-1`` (as
      Azure's Responses API has sent); the request headers are kept;
    * ``headers_on_429_p``: a rate-limit 429 (``rate_limit_exceeded`` or ``slow_down``) carries the
      ``x-ratelimit-*`` headers with this probability (the real API sometimes sends 429s without them);
      ``missing_headers_on_429=True`` is the older spelling of ``headers_on_429_p=0``;
    * ``retry_after_p``: a rate-limit 429 carries ``retry-after`` (and ``retry-after-ms`` when configured)
      with this probability;
    * ``all_endpoints``: the 500/503/drop faults also hit the other endpoints (files, batches, long-running
      objects), a POST *after* it acted: the file is uploaded or the batch created, and the answer is an error
      or is cut off (what a client must survive without creating the object twice).

    Draws for probabilities strictly between 0 and 1 come from the simulator's seeded RNG (``seed``), so a
    run is reproducible; 0 and 1 draw nothing.
    """

    error_500: float = 0.0
    error_503: float = 0.0
    drop: float = 0.0
    stall: float = 0.0
    stall_s: float = 600.0
    missing_headers: float = 0.0
    unknown_token_headers: float = 0.0
    missing_headers_on_429: bool = False
    headers_on_429_p: float = 1.0
    retry_after_p: float = 1.0
    all_endpoints: bool = False

    @property
    def any_random(self) -> bool:
        return (
            self.error_500 + self.error_503 + self.drop + self.stall + self.missing_headers + self.unknown_token_headers
        ) > 0

    @property
    def ratelimit_headers_on_429(self) -> float:
        """The probability that a rate-limit 429 carries ``x-ratelimit-*`` (the old bool forces 0)."""
        return 0.0 if self.missing_headers_on_429 else self.headers_on_429_p


def _chat(model: str, context: int = 128_000) -> ModelSpec:
    return ModelSpec(model, "chat", context)


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    _chat("gpt-4o-mini"),
    _chat("gpt-4o"),
    _chat("gpt-4.1", 1_047_576),
    _chat("gpt-4.1-mini", 1_047_576),
    _chat("gpt-4.1-nano", 1_047_576),
    _chat("gpt-5", 400_000),
    _chat("gpt-5-mini", 400_000),
    _chat("gpt-5-nano", 400_000),
    _chat("o4-mini", 200_000),
    _chat("gpt-3.5-turbo", 16_385),
    _chat("gpt-3.5-turbo-instruct", 4_096),
    ModelSpec("text-embedding-3-small", "embedding", 8_192, 1536),
    ModelSpec("text-embedding-3-large", "embedding", 8_192, 3072),
    ModelSpec("text-embedding-ada-002", "embedding", 8_192, 1536),
)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator does, in one immutable value.

    Top-level ``rpm``/``tpm``/``rpd``/``tpd`` are the default limits of every model (per organization).
    ``projects`` names projects with limits of their own (``KeySpec.project``): a key of such a project is
    enforced in its project's buckets (per pool, like the organization's) as well as its organization's.
    ``credit_usd`` is each organization's prepaid credit (``None`` = unlimited); once billed usage reaches
    it, requests get a 429 whose code is ``quota_error_code`` (``insufficient_quota``, or another of
    ``protocol.errors.BILLING_CODES``). ``responder`` is ``"echo"``, ``"fixed"``, ``"classify"`` or a
    Python callable ``(endpoint, body) -> text``.

    Enforcement beyond the minute buckets (``openai-behaviour.md`` §7; all off by default except charged
    refusals; :meth:`realistic` turns them all on):

    * ``quantum_s``: every RPM and TPM limit is also enforced over ``quantum_s``-second windows: a second
      GCRA bucket per minute dimension with the same refill rate (``limit / 60`` per second) and capacity
      ``limit × quantum_s / 60``. A request must fit both. A request larger than the quantum bucket's
      capacity (but within the minute limit) is admitted once the quantum bucket is empty, so it never
      deadlocks. Headers keep describing the minute bucket only.
    * ``count_refused_requests`` (default ``True``): a refused request still costs one request in every
      request bucket (minute, quantum, day), as "unsuccessful requests contribute to your per-minute limit".
    * ``ramp_factor`` (``None`` = off), ``ramp_window_s``, ``ramp_floor``: per (organization, pool) and per
      minute dimension, the simulator clock is cut into ``ramp_window_s``-second windows aligned to multiples
      of ``ramp_window_s``; within one window the admitted units (requests; tokens at their admission cost)
      may not exceed ``max(ramp_floor × limit × ramp_window_s / 60, ramp_factor × units admitted in the
      previous window)``. The first request of a window is always let through by the ramp (so one request
      larger than the allowance does not deadlock). A request that would cross it gets a 429 ``slow_down``
      whose wait is the time to the next window (``slow_down_status=503``: a 503 ``slow_down``, as older
      servers sent). The ramp is checked after the rate buckets admit, and only on model pools (GETs on the
      organization-wide bucket are not ramp-limited).
    * ``faults.missing_headers``, ``faults.headers_on_429_p``, ``faults.retry_after_p``: unreliable headers.

    Service tiers: a request's ``service_tier`` (``auto``, ``default``, ``flex``, ``priority`` or its new name
    ``fast``, ``scale``) is answered by that tier and the response says which (``auto`` -> ``default``). Flex
    is billed at the Batch price and priority at twice the standard one (``protocol.pricing.TIER_FACTORS``).
    A flex request is refused — 429 with code ``flex_error_code``, never billed, its tokens returned to the
    bucket — with probability ``flex_unavailable_p``, and always during the ``flex_busy`` periods (seconds of
    the simulator clock since it started). ``flex_latency_ms`` is added to a flex answer's latency;
    ``priority_latency_factor`` scales a priority answer's.
    """

    rpm: int | None = 10_000
    tpm: int | None = 10_000_000
    rpd: int | None = None
    tpd: int | None = None
    credit_usd: float | None = None
    quota_error_code: str = "insufficient_quota"  # the out-of-credit 429's code: one of BILLING_CODES
    latency_ms: float = 0.0
    latency_per_token_ms: float = 0.0
    latency_jitter: float = 0.0
    seed: int = 0  # seeds jitter and faults (and ids, with deterministic_ids)
    deterministic_ids: bool = False
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    pools: tuple[PoolSpec, ...] = ()
    keys: Mapping[str, KeySpec] = field(default_factory=dict)
    projects: Mapping[str, Limits] = field(default_factory=dict)  # project name -> its limits, per pool
    prices: PriceTable = field(default_factory=PriceTable)
    faults: FaultConfig = FaultConfig()
    responder: str | Responder = "echo"
    fixed_text: str = "This is a simulated response."
    classify_pattern: str = r"(?i)\byes\b"
    classify_yes: str = "YES"
    classify_no: str = "NO"
    count_get_requests: bool = True  # GETs (models, polls) cost one request of the org-wide bucket
    count_refused_requests: bool = True  # a 429'd request still costs one request (as on the real API)
    settle_actual_tokens: bool = True  # correct TPM/TPD to the actual usage once the response is known
    retry_after: str = "ceil"  # "ceil" (integer seconds, as api.openai.com), "exact", or "none"
    retry_after_ms: bool = False  # also send Azure's retry-after-ms
    max_body_bytes: int = 32 * 1024 * 1024
    organization_header: bool = True
    longrun: Any = None  # sim.longrun's settings: a LongrunConfig or a mapping of its fields (TOML [longrun])
    quantum_s: float | None = None  # also enforce RPM/TPM over windows this long (None: minute buckets only)
    ramp_factor: float | None = None  # slow_down when a window admits more than this × the previous one
    ramp_window_s: float = 15.0
    ramp_floor: float = 0.5  # a window may always admit this fraction of its share of the minute limit
    slow_down_status: int = 429  # the ramp limit's refusal: 429, or 503 as older servers sent it
    # Service tiers (service_tier on chat completions and Responses; openai-behaviour.md §7):
    flex_unavailable_p: float = 0.0  # a flex request is refused 429 "Resource Unavailable" (unbilled), at random
    flex_busy: tuple[tuple[float, float], ...] = ()  # (start, end) seconds of the sim clock: flex always refused
    flex_error_code: str = "resource_unavailable"  # the refusal's code (the real one is unconfirmed)
    flex_latency_ms: float = 0.0  # added to a flex answer's latency (the real API: seconds to a minute)
    priority_latency_factor: float = 0.5  # a priority answer's latency, as a factor of the standard one

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpd", "tpd"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        for project, limits in self.projects.items():
            if not (isinstance(project, str) and project):
                raise ConfigError(f"projects: a project name must be a non-empty string, got {project!r}")
            if not isinstance(limits, Limits):
                raise ConfigError(f"projects.{project} must be a Limits, got {type(limits).__name__}")
            for name in _LIMIT_NAMES:
                value = getattr(limits, name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                    raise ConfigError(f"projects.{project}.{name} must be a positive integer or None, got {value!r}")
        if self.quota_error_code not in BILLING_CODES:
            raise ConfigError(
                f"quota_error_code must be one of {', '.join(sorted(BILLING_CODES))}, got {self.quota_error_code!r}"
            )
        if self.credit_usd is not None and not (self.credit_usd >= 0 and math.isfinite(self.credit_usd)):
            raise ConfigError(f"credit_usd must be >= 0, got {self.credit_usd!r}")
        if self.latency_ms < 0 or self.latency_per_token_ms < 0 or not 0 <= self.latency_jitter <= 1:
            raise ConfigError("latency values must be >= 0 and latency_jitter within [0, 1]")
        if self.retry_after not in ("ceil", "exact", "none"):
            raise ConfigError(f"retry_after must be ceil, exact or none, got {self.retry_after!r}")
        if isinstance(self.responder, str) and self.responder not in ("echo", "fixed", "classify"):
            raise ConfigError(f"responder must be echo, fixed, classify or a callable, got {self.responder!r}")
        for fault in (
            "error_500",
            "error_503",
            "drop",
            "stall",
            "missing_headers",
            "unknown_token_headers",
            "headers_on_429_p",
            "retry_after_p",
        ):
            p = getattr(self.faults, fault)
            if not _is_real(p) or not 0 <= p <= 1:
                raise ConfigError(f"faults.{fault} must be a probability in [0, 1], got {p!r}")
        if self.quantum_s is not None and not (_is_real(self.quantum_s) and 0 < self.quantum_s <= 60):
            raise ConfigError(f"quantum_s must be a number of seconds in (0, 60] (or off), got {self.quantum_s!r}")
        if self.ramp_factor is not None and not (_is_real(self.ramp_factor) and self.ramp_factor >= 1):
            raise ConfigError(f"ramp_factor must be a number >= 1 (or off), got {self.ramp_factor!r}")
        if not (_is_real(self.ramp_window_s) and self.ramp_window_s > 0):
            raise ConfigError(f"ramp_window_s must be a positive number of seconds, got {self.ramp_window_s!r}")
        if not (_is_real(self.ramp_floor) and self.ramp_floor >= 0):
            raise ConfigError(f"ramp_floor must be a number >= 0, got {self.ramp_floor!r}")
        if self.slow_down_status not in (429, 503) or isinstance(self.slow_down_status, bool):
            raise ConfigError(f"slow_down_status must be 429 or 503, got {self.slow_down_status!r}")
        if not (_is_real(self.flex_unavailable_p) and 0 <= self.flex_unavailable_p <= 1):
            raise ConfigError(f"flex_unavailable_p must be a probability in [0, 1], got {self.flex_unavailable_p!r}")
        for period in self.flex_busy:
            if not (len(period) == 2 and all(_is_real(t) for t in period) and 0 <= period[0] <= period[1]):
                raise ConfigError(f"flex_busy periods must be [start, end] seconds with start <= end, got {period!r}")
        if not (_is_real(self.flex_latency_ms) and self.flex_latency_ms >= 0):
            raise ConfigError(f"flex_latency_ms must be a number >= 0, got {self.flex_latency_ms!r}")
        if not (_is_real(self.priority_latency_factor) and self.priority_latency_factor > 0):
            raise ConfigError(f"priority_latency_factor must be > 0, got {self.priority_latency_factor!r}")
        if not (isinstance(self.flex_error_code, str) and self.flex_error_code):
            raise ConfigError("flex_error_code must be a non-empty string")

    # -- presets ----------------------------------------------------------------------------------------

    @classmethod
    def realistic(cls, **overrides: Any) -> SimConfig:
        """The real API's rougher edges (``openai-behaviour.md`` §7), each one configurable.

        Quantized limits (1 s windows), refused requests charged, 2 % of successes and half the 429s without
        ``x-ratelimit-*`` headers, half the 429s without ``retry-after``, and a ramp limit (at most double
        the previous 15 s window, never less than half of a window's share of the minute limit). Keyword
        ``overrides`` replace fields (``faults=`` replaces the whole :class:`FaultConfig`).
        """
        return cls(**{**REALISTIC, **overrides})

    # -- derived views ----------------------------------------------------------------------------------

    @property
    def default_limits(self) -> Limits:
        return Limits(self.rpm, self.tpm, self.rpd, self.tpd)

    def pool_limits(self, model_id: str) -> tuple[str, Limits]:
        """The pool ``model_id`` is enforced in (its pool's name, or the model's own id) and its limits."""
        spec = self.model(model_id)
        own = spec.limits if spec is not None else Limits()
        pool = self.pool_of(model_id)
        if pool is not None:
            return pool.name, pool.limits.merged_over(own).merged_over(self.default_limits)
        return model_id, own.merged_over(self.default_limits)

    @property
    def latency(self) -> LatencyConfig:
        return LatencyConfig(self.latency_ms, self.latency_per_token_ms, self.latency_jitter)

    def model(self, model_id: str) -> ModelSpec | None:
        for spec in self.models:
            if spec.id == model_id:
                return spec
        return None

    def pool_of(self, model_id: str) -> PoolSpec | None:
        for pool in self.pools:
            if model_id in pool.models:
                return pool
        return None

    def with_overrides(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed (``None`` values are ignored: "flag not given")."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    # -- TOML -------------------------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | Path, *, preset: str | None = None, **overrides: Any) -> SimConfig:
        """Load a TOML file (format in docs/simulator.md); keyword overrides win (e.g. CLI flags).

        ``preset`` (``"realistic"`` or ``"default"``) wins over the file's own ``preset`` key; the file's
        settings then override the preset's, and ``overrides`` override both.
        """
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        try:
            return cls.from_mapping(data, preset=preset, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, preset: str | None = None, **overrides: Any) -> SimConfig:
        """A config from parsed TOML; see :meth:`from_toml` for ``preset`` and ``overrides``."""
        known = {f.name for f in fields(cls)}
        if preset is None:
            preset = data.get("preset", "default")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {preset!r}")
        kwargs: dict[str, Any] = dict(PRESETS[preset])
        limits = data.get("limits", {})
        _expect_table(limits, "limits")
        for name in ("rpm", "tpm", "rpd", "tpd"):
            if name in limits:
                kwargs[name] = _limit(limits[name], f"limits.{name}")
        scalar_fields = {
            "credit_usd": (int, float),
            "quota_error_code": (str,),
            "seed": (int,),
            "deterministic_ids": (bool,),
            "responder": (str,),
            "fixed_text": (str,),
            "classify_pattern": (str,),
            "classify_yes": (str,),
            "classify_no": (str,),
            "count_get_requests": (bool,),
            "count_refused_requests": (bool,),
            "settle_actual_tokens": (bool,),
            "retry_after": (str,),
            "retry_after_ms": (bool,),
            "max_body_bytes": (int,),
            "ramp_window_s": (int, float),
            "ramp_floor": (int, float),
            "slow_down_status": (int,),
            "flex_unavailable_p": (int, float),
            "flex_error_code": (str,),
            "flex_latency_ms": (int, float),
            "priority_latency_factor": (int, float),
        }
        for name, value in data.items():
            if name in _APART:  # tables, and the preset: read below
                continue
            if name == "flex_busy":  # [[start, end], ...]
                if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
                    raise ConfigError("flex_busy must be a list of [start, end] pairs (seconds)")
                kwargs[name] = tuple((_number(a, name), _number(b, name)) for a, b in value)
                continue
            if name in _OFF_WHEN_ZERO:  # TOML has no null: 0 or false turns these off (e.g. under a preset)
                kwargs[name] = None if value is False or value == 0 else _number(value, name)
                continue
            if name not in scalar_fields:
                raise ConfigError(f"unknown setting {name!r}")
            if not isinstance(value, scalar_fields[name]) or (
                isinstance(value, bool) and bool not in scalar_fields[name]
            ):
                raise ConfigError(f"{name} has the wrong type ({type(value).__name__})")
            kwargs[name] = float(value) if float in scalar_fields[name] else value
        latency = data.get("latency", {})
        _expect_table(latency, "latency")
        for src, dst in (
            ("base_ms", "latency_ms"),
            ("per_token_ms", "latency_per_token_ms"),
            ("jitter", "latency_jitter"),
        ):
            if src in latency:
                kwargs[dst] = _number(latency[src], f"latency.{src}")
        _reject_unknown(latency, {"base_ms", "per_token_ms", "jitter"}, "latency")

        faults = data.get("faults", {})
        _expect_table(faults, "faults")
        fault_fields = {f.name for f in fields(FaultConfig)}
        _reject_unknown(faults, fault_fields, "faults")
        fault_kwargs: dict[str, Any] = {}
        for name, value in faults.items():
            if name in ("missing_headers_on_429", "all_endpoints"):
                if not isinstance(value, bool):
                    raise ConfigError(f"faults.{name} must be true or false")
                fault_kwargs[name] = value
            else:
                fault_kwargs[name] = _number(value, f"faults.{name}")
        # A [faults] table refines the preset's faults rather than resetting the ones it leaves out.
        kwargs["faults"] = replace(kwargs.get("faults", FaultConfig()), **fault_kwargs)

        models_data = data.get("models", {})
        _expect_table(models_data, "models")
        models = {m.id: m for m in DEFAULT_MODELS}
        for model_id, spec in models_data.items():
            _expect_table(spec, f"models.{model_id}")
            _reject_unknown(
                spec, {"kind", "context_window", "dimensions", "owned_by", *_LIMIT_NAMES}, f"models.{model_id}"
            )
            base = models.get(model_id, ModelSpec(model_id))
            kind = spec.get("kind", base.kind)
            if kind not in ("chat", "embedding"):
                raise ConfigError(f"models.{model_id}.kind must be chat or embedding, got {kind!r}")
            models[model_id] = ModelSpec(
                id=model_id,
                kind=kind,
                context_window=int(
                    _number(spec.get("context_window", base.context_window), f"models.{model_id}.context_window")
                ),
                dimensions=int(_number(spec.get("dimensions", base.dimensions), f"models.{model_id}.dimensions")),
                limits=_limits_of(spec, f"models.{model_id}"),
                owned_by=str(spec.get("owned_by", base.owned_by)),
            )
        kwargs["models"] = tuple(models.values())

        pools_data = data.get("pools", {})
        _expect_table(pools_data, "pools")
        pools = []
        for name, spec in pools_data.items():
            _expect_table(spec, f"pools.{name}")
            _reject_unknown(spec, {"models", *_LIMIT_NAMES}, f"pools.{name}")
            members = spec.get("models")
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members) or not members:
                raise ConfigError(f"pools.{name}.models must be a non-empty list of model names")
            pools.append(PoolSpec(name, tuple(members), _limits_of(spec, f"pools.{name}")))
        kwargs["pools"] = tuple(pools)

        keys_data = data.get("keys", {})
        _expect_table(keys_data, "keys")
        keys: dict[str, KeySpec] = {}
        for index, (key, spec) in enumerate(keys_data.items()):
            where = f"keys[{index}]"  # never echo a key in an error
            if isinstance(spec, str):
                keys[key] = KeySpec(spec)
                continue
            _expect_table(spec, where)
            _reject_unknown(spec, {"org", "project"}, where)
            if not isinstance(spec.get("org"), str) or not spec["org"]:
                raise ConfigError(f"{where}.org must be a non-empty string")
            project = spec.get("project")
            if project is not None and not isinstance(project, str):
                raise ConfigError(f"{where}.project must be a string")
            keys[key] = KeySpec(spec["org"], project)
        kwargs["keys"] = keys

        projects_data = data.get("projects", {})
        _expect_table(projects_data, "projects")
        projects: dict[str, Limits] = {}
        for name, spec in projects_data.items():
            _expect_table(spec, f"projects.{name}")
            _reject_unknown(spec, set(_LIMIT_NAMES), f"projects.{name}")
            projects[name] = _limits_of(spec, f"projects.{name}")
        kwargs["projects"] = projects

        prices_data = data.get("prices", {})
        _expect_table(prices_data, "prices")
        overrides_p: dict[str, ModelPrice] = {}
        for model_id, spec in prices_data.items():
            _expect_table(spec, f"prices.{model_id}")
            _reject_unknown(spec, {"input", "output", "cached_input"}, f"prices.{model_id}")
            cached = spec.get("cached_input")
            overrides_p[model_id] = ModelPrice(
                _number(spec.get("input", 0.0), f"prices.{model_id}.input"),
                _number(spec.get("output", 0.0), f"prices.{model_id}.output"),
                None if cached is None else _number(cached, f"prices.{model_id}.cached_input"),
            )
        kwargs["prices"] = PriceTable().with_overrides(overrides_p)
        if "longrun" in data:
            _expect_table(data["longrun"], "longrun")
            kwargs["longrun"] = dict(data["longrun"])
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(kwargs) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)


_LIMIT_NAMES = ("rpm", "tpm", "rpd", "tpd")
_APART = ("limits", "models", "pools", "keys", "projects", "prices", "latency", "faults", "longrun", "preset")
_OFF_WHEN_ZERO = ("quantum_s", "ramp_factor")

REALISTIC: Mapping[str, Any] = {
    "quantum_s": 1.0,
    "count_refused_requests": True,
    "faults": FaultConfig(missing_headers=0.02, headers_on_429_p=0.5, retry_after_p=0.5),
    "ramp_factor": 2.0,
    "ramp_window_s": 15.0,
    "ramp_floor": 0.5,
}
"""The field values of :meth:`SimConfig.realistic` (why each: docs/simulator.md, "Realistic enforcement")."""

PRESETS: Mapping[str, Mapping[str, Any]] = {"default": {}, "realistic": REALISTIC}


def _is_real(value: Any) -> bool:
    """A finite int or float, not a bool (``True`` is not a probability)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _expect_table(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")


def _reject_unknown(table: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where} must be a non-negative number, got {value!r}")
    return float(value)


def _limit(value: Any, where: str) -> int | None:
    if value is False or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a positive integer (0 or false = unlimited), got {value!r}")
    return value


def _limits_of(spec: Mapping[str, Any], where: str) -> Limits:
    return Limits(**{n: _limit(spec[n], f"{where}.{n}") for n in _LIMIT_NAMES if n in spec})
