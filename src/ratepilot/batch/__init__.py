"""The Batch API pipeline: validate, shard, submit, track, collect in input order, retry — resumably.

```python
from openai import OpenAI
import ratepilot
from ratepilot.batch import BatchRunner, BatchConfig

pilot = ratepilot.Pilot()
with BatchRunner(pilot.wrap(OpenAI())) as runner:
    summary = runner.run("requests.jsonl", "results.jsonl")   # submit + wait + collect
```

Layers: :mod:`.plan` (sharding), :mod:`.prepare` (one streaming validate+plan pass), :mod:`.machine` (the
sans-IO state machine: recorded state -> next action), :mod:`.runner` (the driver: intent, call, outcome),
:mod:`.collect` (index results by custom_id, write them in input order), :mod:`ratepilot.batch.state` (the SQLite
state).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use: the planner's parsing workers import ratepilot.batch.blocks, and must not pay for the runner
# (and the OpenAI SDK) they never use (see :mod:`.blocks`).
_EXPORTS = {
    "BatchConfig": ".config",
    "BatchInputError": ".prepare",
    "BatchRunner": ".runner",
    "CollectSummary": ".collect",
    "JobConflictError": ".base",
    "JobNotFoundError": ".base",
    "JobStatus": ".status",
    "OnlineFallback": ".online",
    "PlanSummary": ".prepare",
    "ShardSpec": ".plan",
    "ShardWriter": ".plan",
    "default_job_name": ".runner",
    "line_outcome": ".machine",
    "next_action": ".machine",
    "sdk_fallback": ".online",
}

__all__ = [
    "BatchConfig",
    "BatchInputError",
    "BatchRunner",
    "CollectSummary",
    "JobConflictError",
    "JobNotFoundError",
    "JobStatus",
    "OnlineFallback",
    "PlanSummary",
    "ShardSpec",
    "ShardWriter",
    "default_job_name",
    "line_outcome",
    "next_action",
    "sdk_fallback",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ratepilot.batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .base import JobConflictError, JobNotFoundError
    from .collect import CollectSummary
    from .config import BatchConfig
    from .machine import line_outcome, next_action
    from .online import OnlineFallback, sdk_fallback
    from .plan import ShardSpec, ShardWriter
    from .prepare import BatchInputError, PlanSummary
    from .runner import BatchRunner, default_job_name
    from .status import JobStatus
