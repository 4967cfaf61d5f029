"""Rate limiting: sans-IO GCRA buckets, the limiter that learns from server headers, and its stores.

``Limiter(store="memory://" | "sqlite:///path" | "redis://host:port/db")`` admits requests per
:class:`Scope` (API key id + model or pool) in every known dimension (RPM, TPM, RPD, TPD, project TPM) at
once. It starts knowing nothing and learns from ``x-ratelimit-*`` headers (:mod:`.learning`).
"""

from __future__ import annotations

from .core import Observation, Reserved, ReserveParams, ScopeState, Wait
from .gcra import Admission, Bucket, Rate, admit_all
from .learning import infer_window, interpret
from .limiter import Limiter
from .stores import Store, open_store
from .types import DIMENSIONS, Cost, CostTooLarge, DimensionView, Grant, Priority, Scope, key_id_for

__all__ = [
    "DIMENSIONS",
    "Admission",
    "Bucket",
    "Cost",
    "CostTooLarge",
    "DimensionView",
    "Grant",
    "Limiter",
    "Observation",
    "Priority",
    "Rate",
    "ReserveParams",
    "Reserved",
    "Scope",
    "ScopeState",
    "Store",
    "Wait",
    "admit_all",
    "infer_window",
    "interpret",
    "key_id_for",
    "open_store",
]
