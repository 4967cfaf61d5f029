"""The simulator's configuration: limits, models, pools, keys, credit, prices, latency, faults.

Built from keyword arguments (``SimConfig(rpm=3, tpm=10_000)``), CLI flags, or a TOML file
(:meth:`SimConfig.from_toml`). Every limit is optional: ``None`` means "no limit on this dimension".
Resolution order for a model's limits: its pool's limits, then the model's own, then the top-level ones.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..protocol.pricing import ModelPrice, PriceTable

__all__ = [
    "DEFAULT_MODELS",
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
    * ``missing_headers``: the ``x-ratelimit-*`` headers are omitted (1.0 = always);
      ``missing_headers_on_429``: always omit them on 429s.
    """

    error_500: float = 0.0
    error_503: float = 0.0
    drop: float = 0.0
    stall: float = 0.0
    stall_s: float = 600.0
    missing_headers: float = 0.0
    missing_headers_on_429: bool = False

    @property
    def any_random(self) -> bool:
        return (self.error_500 + self.error_503 + self.drop + self.stall + self.missing_headers) > 0


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
    ``credit_usd`` is each organization's prepaid credit (``None`` = unlimited); once billed usage reaches
    it, requests get ``insufficient_quota``. ``responder`` is ``"echo"``, ``"fixed"``, ``"classify"`` or a
    Python callable ``(endpoint, body) -> text``.
    """

    rpm: int | None = 10_000
    tpm: int | None = 10_000_000
    rpd: int | None = None
    tpd: int | None = None
    credit_usd: float | None = None
    latency_ms: float = 0.0
    latency_per_token_ms: float = 0.0
    latency_jitter: float = 0.0
    seed: int = 0  # seeds jitter and faults (and ids, with deterministic_ids)
    deterministic_ids: bool = False
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    pools: tuple[PoolSpec, ...] = ()
    keys: Mapping[str, KeySpec] = field(default_factory=dict)
    prices: PriceTable = field(default_factory=PriceTable)
    faults: FaultConfig = FaultConfig()
    responder: str | Responder = "echo"
    fixed_text: str = "This is a simulated response."
    classify_pattern: str = r"(?i)\byes\b"
    classify_yes: str = "YES"
    classify_no: str = "NO"
    count_get_requests: bool = True  # GETs (models, polls) cost one request of the org-wide bucket
    count_refused_requests: bool = False  # True: a 429'd request still costs one request (longer waits)
    settle_actual_tokens: bool = True  # correct TPM/TPD to the actual usage once the response is known
    retry_after: str = "ceil"  # "ceil" (integer seconds, as api.openai.com), "exact", or "none"
    retry_after_ms: bool = False  # also send Azure's retry-after-ms
    max_body_bytes: int = 32 * 1024 * 1024
    organization_header: bool = True
    longrun: Any = None  # sim.longrun's settings: a LongrunConfig or a mapping of its fields (TOML [longrun])

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpd", "tpd"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if self.credit_usd is not None and not (self.credit_usd >= 0 and math.isfinite(self.credit_usd)):
            raise ConfigError(f"credit_usd must be >= 0, got {self.credit_usd!r}")
        if self.latency_ms < 0 or self.latency_per_token_ms < 0 or not 0 <= self.latency_jitter <= 1:
            raise ConfigError("latency values must be >= 0 and latency_jitter within [0, 1]")
        if self.retry_after not in ("ceil", "exact", "none"):
            raise ConfigError(f"retry_after must be ceil, exact or none, got {self.retry_after!r}")
        if isinstance(self.responder, str) and self.responder not in ("echo", "fixed", "classify"):
            raise ConfigError(f"responder must be echo, fixed, classify or a callable, got {self.responder!r}")
        for fault in ("error_500", "error_503", "drop", "stall", "missing_headers"):
            p = getattr(self.faults, fault)
            if not 0 <= p <= 1:
                raise ConfigError(f"faults.{fault} must be a probability in [0, 1], got {p!r}")

    # -- derived views ----------------------------------------------------------------------------------

    @property
    def default_limits(self) -> Limits:
        return Limits(self.rpm, self.tpm, self.rpd, self.tpd)

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
    def from_toml(cls, path: str | Path, **overrides: Any) -> SimConfig:
        """Load a TOML file (format in the README); keyword overrides win (e.g. CLI flags)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        try:
            return cls.from_mapping(data, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> SimConfig:
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        limits = data.get("limits", {})
        _expect_table(limits, "limits")
        for name in ("rpm", "tpm", "rpd", "tpd"):
            if name in limits:
                kwargs[name] = _limit(limits[name], f"limits.{name}")
        scalar_fields = {
            "credit_usd": (int, float),
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
        }
        for name, value in data.items():
            if name in ("limits", "models", "pools", "keys", "prices", "latency", "faults", "longrun"):
                continue
            if name not in scalar_fields:
                raise ConfigError(f"unknown setting {name!r}")
            if not isinstance(value, scalar_fields[name]) or (
                isinstance(value, bool) and bool not in scalar_fields[name]
            ):
                raise ConfigError(f"{name} has the wrong type ({type(value).__name__})")
            kwargs[name] = float(value) if name == "credit_usd" else value
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
            if name == "missing_headers_on_429":
                if not isinstance(value, bool):
                    raise ConfigError("faults.missing_headers_on_429 must be true or false")
                fault_kwargs[name] = value
            else:
                fault_kwargs[name] = _number(value, f"faults.{name}")
        kwargs["faults"] = FaultConfig(**fault_kwargs)

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
