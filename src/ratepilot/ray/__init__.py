"""``ratepilot.ray``: keep a whole Ray cluster under one organization's rate limits (``pip install 'ratepilot[ray]'``).

Ray Data's own HTTP processor paces each actor on its own (``qps`` per actor, restarted every block), has no
token limit, ignores ``retry-after`` and retries ``insufficient_quota``. Here every actor sends through a
:class:`~ratepilot.Pilot` whose limiter lives in Redis, shared by every actor on every node (and by any other
``ratepilot`` process on the same key), learned from the server's own headers::

    import ray
    from ratepilot.ray import PilotSettings, run_dataset

    settings = PilotSettings(store="redis://redis-host:6379/0", budget_usd=20.0)
    report = run_dataset("requests.jsonl", "results.jsonl", settings, actors=8)   # resumable
    print(report.exit_code, report.succeeded, report.cost_usd)

or, inside a pipeline of your own: ``map_requests(ds, settings, actors=8)`` (rows with ``custom_id`` and
``body``; result columns ``custom_id``, ``status_code``, ``request_id``, ``body``, ``error``). See docs/scale.md.

``import ratepilot`` never imports Ray; this module does (and says how to install it if it is missing).
"""

from __future__ import annotations

try:
    import ray.data  # noqa: F401  (fail here, with the install hint, not deep inside a pipeline)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ratepilot.ray needs Ray Data: pip install 'ratepilot[ray]'") from exc

from .job import RunReport, from_jsonl, map_requests, result_line, run_dataset
from .settings import STOP_REASONS, PilotSettings, RunControl
from .udf import FINAL_ERRORS, REQUEST_COLUMNS, RESULT_COLUMNS, RESULT_SCHEMA, PilotUDF

__all__ = [
    "FINAL_ERRORS",
    "REQUEST_COLUMNS",
    "RESULT_COLUMNS",
    "RESULT_SCHEMA",
    "STOP_REASONS",
    "PilotSettings",
    "PilotUDF",
    "RunControl",
    "RunReport",
    "from_jsonl",
    "map_requests",
    "result_line",
    "run_dataset",
]
