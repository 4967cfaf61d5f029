"""Crash points for the kill -9 tests: ``RATEPILOT_BATCH_CRASH_AT=<point>[:<n>]`` SIGKILLs the process there.

A test hook, compiled into the driver on purpose: the crash tests run the real CLI in a subprocess and need
it to die at an exact step (after an intent is committed, after an upload, after a create, mid-collect, mid-cleanup)
without any chance to clean up — exactly what ``kill -9`` does. Unset (always, outside tests) it is a no-op.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "CRASH_POINTS", "crash_point"]

CRASH_ENV = "RATEPILOT_BATCH_CRASH_AT"
CRASH_POINTS = (
    "during-plan",
    "after-plan",
    "after-upload-intent",
    "after-upload",
    "after-create-intent",
    "after-create",
    "during-collect",
    "during-cleanup",
    "during-collect-write",
)
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
