"""The Assistants API (v2): assistants, threads, messages and runs, with runs as a sans-IO lifecycle.

A run goes ``queued -> in_progress -> completed`` over configurable durations; injected runs end ``failed``
with ``last_error``; a run whose tools include a function stops at ``requires_action`` until tool outputs are
submitted; a run not finished by ``expires_at`` (or left in ``requires_action``) ends ``expired``. On
completion the configured responder answers the thread (attached files' text included), and the answer is
added to the thread as an assistant message — the classic "classify each file" loop works unchanged.
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

__all__ = ["AssistantsBook", "AssistantsHost", "Run", "Thread"]

RUN_TERMINAL = frozenset({"cancelled", "failed", "completed", "expired", "incomplete"})
_FAILED = {"code": "server_error", "message": "Sorry, something went wrong."}


class AssistantsHost(Protocol):
    def execute(self, endpoint: str, body: dict[str, Any], org: str) -> tuple[int, dict[str, Any]]: ...

    def file_text(self, org: str, file_id: str) -> str | None: ...


def text_content(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"value": value, "annotations": []}}]


def content_text(content: Any) -> str:
    """The text of a message's ``content`` (a string, or a list of text parts) for the responder."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif isinstance(text, dict) and isinstance(text.get("value"), str):
                    parts.append(text["value"])
    return "\n".join(parts)


@dataclass
class Thread:
    id: str
    org: str
    created: float
    metadata: dict[str, Any]
    tool_resources: dict[str, Any] | None
    messages: list[dict[str, Any]] = field(default_factory=list)  # oldest first


@dataclass
class Run:
    id: str
    org: str
    thread_id: str
    assistant_id: str
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    metadata: dict[str, Any]
    created: float
    config: LongrunConfig
    outcome: str  # completed | failed
    extra: dict[str, Any]
    status: str = "queued"
    times: dict[str, float] = field(default_factory=dict)
    queued_at: float = 0.0  # start of the current queued spell (again after tool outputs)
    last_error: dict[str, Any] | None = None
    required_action: dict[str, Any] | None = None
    tool_outputs: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None

    @property
    def expires(self) -> float:
        return self.created + self.config.clock_seconds(self.config.run_expiry_seconds)

    @property
    def has_function_tools(self) -> bool:
        return any(t.get("type") == "function" for t in self.tools)

    def next_event(self) -> float | None:
        cfg = self.config
        if self.status == "queued":
            return min(self.queued_at + cfg.clock_seconds(cfg.run_queued_seconds), self.expires)
        if self.status == "in_progress":
            return min(self.times["in_progress"] + cfg.clock_seconds(cfg.run_in_progress_seconds), self.expires)
        if self.status == "requires_action":
            return self.expires
        if self.status == "cancelling":
            return self.times["cancelling"]
        return None

    def to_object(self, stamp: Callable[[float], int]) -> dict[str, Any]:
        def when(name: str) -> int | None:
            t = self.times.get(name)
            return stamp(t) if t is not None else None

        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": stamp(self.created),
            "assistant_id": self.assistant_id,
            "thread_id": self.thread_id,
            "status": self.status,
            "started_at": when("in_progress"),
            "expires_at": None if self.status in RUN_TERMINAL else stamp(self.expires),
            "cancelled_at": when("cancelled"),
            "failed_at": when("failed"),
            "completed_at": when("completed"),
            "required_action": self.required_action,
            "last_error": self.last_error,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "metadata": self.metadata,
            "usage": self.usage,
            "incomplete_details": None,
            "temperature": self.extra.get("temperature", 1.0),
            "top_p": self.extra.get("top_p", 1.0),
            "max_prompt_tokens": self.extra.get("max_prompt_tokens"),
            "max_completion_tokens": self.extra.get("max_completion_tokens"),
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "response_format": self.extra.get("response_format", "auto"),
            "tool_choice": self.extra.get("tool_choice", "auto"),
            "parallel_tool_calls": self.extra.get("parallel_tool_calls", True),
        }


class AssistantsBook:
    """Assistants, threads (with their messages) and runs of one simulator."""

    def __init__(self) -> None:
        self.assistants: dict[str, dict[str, Any]] = {}
        self._assistant_org: dict[str, str] = {}
        self.threads: dict[str, Thread] = {}
        self.runs: dict[str, Run] = {}
        self._active: dict[str, Run] = {}  # not yet terminal
        self._seq = 0

    @property
    def pending(self) -> bool:
        """Anything not yet terminal (cheap: checked before every request)."""
        return bool(self._active)

    # -- assistants ------------------------------------------------------------------------------------------

    def create_assistant(self, org: str, body: dict[str, Any], created_at: int) -> dict[str, Any]:
        obj = {
            "id": new_id("asst"),
            "object": "assistant",
            "created_at": created_at,
            "name": body.get("name"),
            "description": body.get("description"),
            "model": body["model"],
            "instructions": body.get("instructions"),
            "tools": list(body.get("tools") or []),
            "tool_resources": body.get("tool_resources") or {},
            "metadata": body.get("metadata") or {},
            "top_p": body.get("top_p", 1.0),
            "temperature": body.get("temperature", 1.0),
            "response_format": body.get("response_format", "auto"),
        }
        self.assistants[obj["id"]] = obj
        self._assistant_org[obj["id"]] = org
        return obj

    def assistant(self, org: str, assistant_id: str) -> dict[str, Any] | None:
        return self.assistants.get(assistant_id) if self._assistant_org.get(assistant_id) == org else None

    def list_assistants(self, org: str) -> list[dict[str, Any]]:
        return [a for a in self.assistants.values() if self._assistant_org.get(a["id"]) == org]

    def delete_assistant(self, org: str, assistant_id: str) -> bool:
        if self.assistant(org, assistant_id) is None:
            return False
        del self.assistants[assistant_id]
        del self._assistant_org[assistant_id]
        return True

    # -- threads and messages --------------------------------------------------------------------------------

    def create_thread(self, org: str, body: dict[str, Any], now: float, stamp: int) -> Thread:
        thread = Thread(new_id("thread"), org, now, body.get("metadata") or {}, body.get("tool_resources"))
        self.threads[thread.id] = thread
        for message in body.get("messages") or []:
            self.add_message(thread, message, stamp)
        return thread

    def thread(self, org: str, thread_id: str) -> Thread | None:
        thread = self.threads.get(thread_id)
        return thread if thread is not None and thread.org == org else None

    def delete_thread(self, org: str, thread_id: str) -> bool:
        if self.thread(org, thread_id) is None:
            return False
        del self.threads[thread_id]
        return True

    @staticmethod
    def thread_object(thread: Thread, stamp: Callable[[float], int]) -> dict[str, Any]:
        return {
            "id": thread.id,
            "object": "thread",
            "created_at": stamp(thread.created),
            "metadata": thread.metadata,
            "tool_resources": thread.tool_resources or {},
        }

    def add_message(
        self,
        thread: Thread,
        body: dict[str, Any],
        created_at: int,
        *,
        assistant_id: str | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        content = body.get("content")
        parts = text_content(content) if isinstance(content, str) else _normalise_parts(content)
        message = {
            "id": new_id("msg"),
            "object": "thread.message",
            "created_at": created_at,
            "assistant_id": assistant_id,
            "thread_id": thread.id,
            "run_id": run_id,
            "role": body.get("role", "user"),
            "content": parts,
            "attachments": list(body.get("attachments") or []),
            "metadata": body.get("metadata") or {},
            "status": "completed",
            "incomplete_details": None,
            "completed_at": created_at,
            "incomplete_at": None,
        }
        thread.messages.append(message)
        return message

    # -- runs ------------------------------------------------------------------------------------------------

    def create_run(
        self,
        org: str,
        thread: Thread,
        assistant: dict[str, Any],
        body: dict[str, Any],
        now: float,
        config: LongrunConfig,
    ) -> Run:
        self._seq += 1
        rng = random.Random(f"{config.seed}:run:{self._seq}")
        outcome = "failed" if rng.random() < config.run_failure_rate else "completed"
        instructions = body.get("instructions") or assistant.get("instructions") or ""
        if body.get("additional_instructions"):
            instructions = f"{instructions}\n{body['additional_instructions']}".strip()
        tools = body.get("tools") if body.get("tools") is not None else assistant.get("tools") or []
        run = Run(
            id=new_id("run"),
            org=org,
            thread_id=thread.id,
            assistant_id=assistant["id"],
            model=body.get("model") or assistant["model"],
            instructions=instructions,
            tools=[t for t in tools or [] if isinstance(t, dict)],
            metadata=body.get("metadata") or {},
            created=now,
            config=config,
            outcome=outcome,
            extra={
                k: body[k]
                for k in (
                    "temperature",
                    "top_p",
                    "max_prompt_tokens",
                    "max_completion_tokens",
                    "response_format",
                    "tool_choice",
                    "parallel_tool_calls",
                )
                if k in body
            },
            queued_at=now,
        )
        self.runs[run.id] = self._active[run.id] = run
        return run

    def run(self, org: str, thread_id: str, run_id: str) -> Run | None:
        run = self.runs.get(run_id)
        return run if run is not None and run.org == org and run.thread_id == thread_id else None

    def runs_of(self, org: str, thread_id: str) -> list[Run]:
        return [r for r in self.runs.values() if r.org == org and r.thread_id == thread_id]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs.values():
            out[run.status] = out.get(run.status, 0) + 1
        return out

    def active(self) -> bool:
        return any(r.status not in RUN_TERMINAL for r in self._active.values())

    def cancel(self, run: Run, at: float) -> bool:
        if run.status in ("cancelling", "cancelled"):
            return True
        if run.status in RUN_TERMINAL:
            return False
        run.status = "cancelling"
        run.times["cancelling"] = at
        run.required_action = None
        return True

    def submit_tool_outputs(self, run: Run, outputs: list[dict[str, Any]], at: float) -> str | None:
        """Resume a ``requires_action`` run; returns an error message when the outputs do not fit."""
        if run.status != "requires_action" or run.required_action is None:
            return f'Runs in status "{run.status}" do not accept tool outputs.'
        expected = {c["id"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]}
        given = {o.get("tool_call_id") for o in outputs}
        missing = expected - given
        if missing:
            return f"Expected tool outputs for call_ids {sorted(expected)}, got {sorted(str(g) for g in given)}"
        run.tool_outputs = list(outputs)
        run.required_action = None
        run.status = "queued"
        run.queued_at = at
        return None

    def advance(self, now: float, host: AssistantsHost, stamp: Callable[[float], int]) -> None:
        pending = [r for r in self._active.values() if r.status not in RUN_TERMINAL]
        while pending:
            due = [(t, r) for r in pending if (t := r.next_event()) is not None and t <= now]
            if not due:
                break
            at, run = min(due, key=lambda d: d[0])
            try:
                self._transition(run, at, host, stamp)
            except Exception:
                # A simulator bug must break one run, never every later request.
                log.exception("run %s failed inside the simulator", run.id)
                run.status, run.last_error, run.required_action = "failed", dict(_FAILED), None
                run.times["failed"] = at
            pending = [r for r in pending if r.status not in RUN_TERMINAL]
        for run_id in [i for i, r in self._active.items() if r.status in RUN_TERMINAL]:
            del self._active[run_id]

    def _transition(self, run: Run, at: float, host: AssistantsHost, stamp: Callable[[float], int]) -> None:
        if run.status == "cancelling":
            run.status = "cancelled"
            run.times["cancelled"] = at
            return
        if at >= run.expires and run.status in ("queued", "in_progress", "requires_action"):
            run.status = "expired"
            run.required_action = None
            run.times["expired"] = at
            return
        if run.status == "queued":
            run.status = "in_progress"
            run.times.setdefault("in_progress", at)
            run.times["in_progress"] = at
            return
        # in_progress -> its end
        if run.outcome == "failed":
            run.status = "failed"
            run.last_error = dict(_FAILED)
            run.times["failed"] = at
            return
        if run.has_function_tools and not run.tool_outputs:
            fn = next(t for t in run.tools if t.get("type") == "function")
            name = (fn.get("function") or {}).get("name", "function")
            run.status = "requires_action"
            run.required_action = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {
                    "tool_calls": [
                        {"id": new_id("call"), "type": "function", "function": {"name": name, "arguments": "{}"}}
                    ]
                },
            }
            return
        self._answer(run, at, host, stamp)

    def _answer(self, run: Run, at: float, host: AssistantsHost, stamp: Callable[[float], int]) -> None:
        thread = self.threads.get(run.thread_id)
        messages: list[dict[str, Any]] = []
        if run.instructions:
            messages.append({"role": "system", "content": run.instructions})
        for message in thread.messages if thread else []:
            text = content_text(message["content"])
            for attachment in message.get("attachments") or []:
                file_text = host.file_text(run.org, str(attachment.get("file_id")))
                if file_text is not None:
                    text = f"{text}\n\n{file_text}" if text else file_text
            messages.append({"role": message["role"], "content": text})
        for output in run.tool_outputs:
            messages.append({"role": "user", "content": str(output.get("output", ""))})
        body: dict[str, Any] = {"model": run.model, "messages": messages}
        if run.extra.get("max_completion_tokens"):
            body["max_completion_tokens"] = run.extra["max_completion_tokens"]
        status, result = host.execute("/v1/chat/completions", body, run.org)
        if not 200 <= status < 300:
            raw_error = result.get("error")
            err: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            code = err.get("code") if err.get("code") in ("rate_limit_exceeded", "invalid_prompt") else "server_error"
            run.status = "failed"
            run.last_error = {"code": code, "message": err.get("message") or _FAILED["message"]}
            run.times["failed"] = at
            return
        choices = result.get("choices") or [{}]
        answer = ((choices[0] or {}).get("message") or {}).get("content") or ""
        usage = result.get("usage") or {}
        run.usage = {
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)),
            "total_tokens": int(usage.get("total_tokens", 0)),
        }
        if thread is not None:
            self.add_message(
                thread,
                {"role": "assistant", "content": answer},
                stamp(at),
                assistant_id=run.assistant_id,
                run_id=run.id,
            )
        run.status = "completed"
        run.times["completed"] = at


def _normalise_parts(content: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.extend(text_content(part["text"]))
        elif isinstance(part, dict):
            parts.append(part)
    return parts
