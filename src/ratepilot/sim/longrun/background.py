"""Responses API background mode (``background: true``) as a sans-IO lifecycle.

``queued -> in_progress -> completed`` (or ``failed`` / ``incomplete`` when injected or when the responder
says so); ``cancelled`` at any point before the end. The answer is produced by the synchronous responder
pipeline when the response completes, so a background response reads exactly like a synchronous one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import LongrunConfig
from .ids import new_id

log = logging.getLogger("ratepilot.sim")

__all__ = ["BackgroundBook", "BackgroundHost", "BackgroundResponse"]

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
_FAILED_ERROR = {"code": "server_error", "message": "An error occurred while processing your request."}


class BackgroundHost(Protocol):
    def execute(self, endpoint: str, body: dict[str, Any], org: str) -> tuple[int, dict[str, Any]]: ...

    def emit(self, event_type: str, object_id: str, at: float) -> None: ...


@dataclass
class BackgroundResponse:
    id: str
    org: str
    request: dict[str, Any]
    created: float
    config: LongrunConfig
    outcome: str  # what the lifecycle will end with unless cancelled: completed | failed | incomplete
    status: str = "queued"
    times: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def next_event(self) -> float | None:
        cfg = self.config
        if self.status == "queued":
            return self.created + cfg.clock_seconds(cfg.response_queued_seconds)
        if self.status == "in_progress":
            return self.times["in_progress"] + cfg.clock_seconds(cfg.response_in_progress_seconds)
        return None

    def transition(self, at: float, host: BackgroundHost) -> None:
        if self.status == "queued":
            self.status = "in_progress"
            self.times["in_progress"] = at
            return
        if self.status != "in_progress":
            return
        if self.outcome == "failed":
            self._end("failed", at, host, error=dict(_FAILED_ERROR))
            return
        body = {k: v for k, v in self.request.items() if k not in ("background", "stream")}
        status, result = host.execute("/v1/responses", body, self.org)
        if not 200 <= status < 300:
            raw_error = result.get("error")
            err: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            self._end(
                "failed",
                at,
                host,
                error={"code": err.get("code") or "server_error", "message": err.get("message") or ""},
            )
            return
        self.result = result
        if self.outcome == "incomplete" or result.get("status") == "incomplete":
            self._end("incomplete", at, host)
        else:
            self._end("completed", at, host)

    def _end(self, status: str, at: float, host: BackgroundHost, error: dict[str, Any] | None = None) -> None:
        self.status = status
        self.times[status] = at
        self.error = error
        host.emit(f"response.{status}", self.id, at)

    def cancel(self, at: float, host: BackgroundHost) -> bool:
        """Cancel now; True if cancelled (or already cancelled), False when it already finished otherwise."""
        if self.status == "cancelled":
            return True
        if self.status in TERMINAL:
            return False
        self._end("cancelled", at, host)
        return True

    def to_object(self, stamp: Callable[[float], int]) -> dict[str, Any]:
        req = self.request
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": stamp(self.created),
            "status": self.status,
            "background": True,
            "completed_at": stamp(self.times["completed"]) if "completed" in self.times else None,
            "error": self.error,
            "incomplete_details": None,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "metadata": req.get("metadata") or {},
            "model": req.get("model"),
            "output": [],
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": req.get("previous_response_id"),
            "store": req.get("store", True),
            "temperature": req.get("temperature", 1.0),
            "text": req.get("text") or {"format": {"type": "text"}},
            "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools") or [],
            "top_p": req.get("top_p", 1.0),
            "truncation": req.get("truncation", "disabled"),
            "usage": None,
            "user": req.get("user"),
        }
        if self.result is not None:
            for key in ("output", "usage", "model", "incomplete_details", "output_text"):
                if key in self.result:
                    obj[key] = self.result[key]
        if self.status == "incomplete" and not obj["incomplete_details"]:
            obj["incomplete_details"] = {"reason": "max_output_tokens"}
        return obj


class BackgroundBook:
    def __init__(self) -> None:
        self._items: dict[str, BackgroundResponse] = {}
        self._active: dict[str, BackgroundResponse] = {}  # not yet terminal
        self._seq = 0

    @property
    def pending(self) -> bool:
        """Anything not yet terminal (cheap: checked before every request)."""
        return bool(self._active)

    def create(self, org: str, request: dict[str, Any], now: float, config: LongrunConfig) -> BackgroundResponse:
        self._seq += 1
        rng = random.Random(f"{config.seed}:response:{self._seq}")
        draw = rng.random()
        if draw < config.response_failure_rate:
            outcome = "failed"
        elif draw < config.response_failure_rate + config.response_incomplete_rate:
            outcome = "incomplete"
        else:
            outcome = "completed"
        item = BackgroundResponse(new_id("resp", 48), org, dict(request), now, config, outcome)
        self._items[item.id] = self._active[item.id] = item
        return item

    def get(self, org: str, response_id: str) -> BackgroundResponse | None:
        item = self._items.get(response_id)
        return item if item is not None and item.org == org else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self._items.values():
            out[item.status] = out.get(item.status, 0) + 1
        return out

    def active(self) -> bool:
        return any(r.status not in TERMINAL for r in self._active.values())

    def advance(self, now: float, host: BackgroundHost) -> None:
        pending = [r for r in self._active.values() if r.status not in TERMINAL]
        while pending:
            due = [(t, r) for r in pending if (t := r.next_event()) is not None and t <= now]
            if not due:
                break
            at, item = min(due, key=lambda d: d[0])
            try:
                item.transition(at, host)
            except Exception:
                # A simulator bug must break one response, never every later request.
                log.exception("background response %s failed inside the simulator", item.id)
                item.status, item.error = "failed", dict(_FAILED_ERROR)
                item.times["failed"] = at
            pending = [r for r in pending if r.status not in TERMINAL]
        for item_id in [i for i, r in self._active.items() if r.status in TERMINAL]:
            del self._active[item_id]
