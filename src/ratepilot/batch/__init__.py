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

from .collect import CollectSummary
from .config import BatchConfig
from .machine import line_outcome, next_action
from .online import sdk_fallback
from .plan import ShardSpec, ShardWriter
from .prepare import BatchInputError, PlanSummary
from .runner import (
    BatchRunner,
    JobConflictError,
    JobNotFoundError,
    JobStatus,
    OnlineFallback,
    default_job_name,
)

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
