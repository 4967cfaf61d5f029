"""``ratepilot run``: a requests JSONL to a results JSONL at the edge of the rate limits, resumable.

See :mod:`ratepilot.run.job` for the flow, :mod:`.online` for the runner, :mod:`.mode` for ``--mode auto``,
:mod:`.window` for how concurrency follows the learned limits.
"""

from __future__ import annotations

from ..engine.online import OnlineRunner, OnlineStats
from ..engine.sender import Answer, HttpSender, SdkSender, Sender
from ..engine.window import InFlightWindow
from .job import ExitCode, JobScan, RunOptions, RunSummary, arun_job, run_job, scan_requests
from .mode import ModeChoice, choose_mode

__all__ = [
    "Answer",
    "ExitCode",
    "HttpSender",
    "InFlightWindow",
    "JobScan",
    "ModeChoice",
    "OnlineRunner",
    "OnlineStats",
    "RunOptions",
    "RunSummary",
    "SdkSender",
    "Sender",
    "arun_job",
    "choose_mode",
    "run_job",
    "scan_requests",
]
