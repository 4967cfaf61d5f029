"""Everything long-running that one simulator holds, and the one place that talks to the simulator's state.

:class:`LongrunStore` is attached to a simulator state as ``state.longrun`` (one per state, created on first
use): the core calls it through the :class:`~ratepilot.sim.state.LongRunning` protocol (advance before each
request, background responses, stats, reset, close). It owns the files, batches, background responses and
Assistants objects, the webhook outbox and sender, and implements the small "host" protocols the sans-IO
lifecycles need (execute a request, bill usage, store a file, emit an event), by calling the state's
documented interface: ``clock``, ``execute``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ...clock import Clock
from ..state import SimState
from .assistants import AssistantsBook
from .background import BackgroundBook
from .batches import BatchBook
from .config import LongrunConfig
from .files import FileStore
from .webhooks import WebhookOutbox, WebhookSender

__all__ = ["LongrunStore", "config_from_state", "configure", "store_for"]


def config_from_state(state: SimState) -> LongrunConfig:
    """The long-running config a state carries: ``state.config.longrun`` (a :class:`LongrunConfig` or a mapping
    of its fields); defaults otherwise."""
    raw: Any = state.config.longrun
    if isinstance(raw, LongrunConfig):
        return raw
    if isinstance(raw, Mapping):
        return LongrunConfig.from_mapping(raw)
    return LongrunConfig()


def store_for(state: SimState) -> LongrunStore:
    """The state's store (``state.longrun``), created on first use from :func:`config_from_state`."""
    found = state.longrun
    if isinstance(found, LongrunStore):
        return found
    with state.lock:
        found = state.longrun
        if isinstance(found, LongrunStore):
            return found
        store = LongrunStore(state, config_from_state(state))
        state.longrun = store
        return store


def configure(state: SimState, config: LongrunConfig) -> LongrunStore:
    """Attach ``config`` to ``state`` (replacing any long-running objects it had)."""
    store = LongrunStore(state, config)
    with state.lock:
        old, state.longrun = state.longrun, store
    if old is not None:
        old.close()  # outside the lock: it waits for the webhook thread, which may be billing through the state
    return store


class LongrunStore:
    def __init__(self, state: SimState, config: LongrunConfig) -> None:
        self.state = state
        self.config = config
        self.lock = threading.RLock()
        self._fresh()

    def _fresh(self) -> None:
        """Empty books and outbox (at creation, and on ``reset``)."""
        config = self.config
        self._wall_offset: float | None = None
        self.files = FileStore()
        self.batches = BatchBook()
        self.responses = BackgroundBook()
        self.assistants = AssistantsBook()
        self.outbox = WebhookOutbox(
            max_attempts=config.webhook_max_attempts,
            backoff=config.webhook_backoff_seconds,
            backoff_max=config.webhook_backoff_max_seconds,
        )
        self.sender: WebhookSender | None = None
        if config.webhook_url and config.webhook_secret:
            self.sender = WebhookSender(
                self.outbox,
                config.webhook_url,
                config.webhook_secret,
                self.state.clock,
                timeout=config.webhook_timeout_seconds,
                on_idle_tick=self._background_tick,
            )

    def reset(self) -> None:
        """Drop every object, as a new store with the same configuration would have none."""
        self.close()  # outside the lock: the webhook thread may be waiting for it
        with self.lock:
            self._fresh()

    # -- time ------------------------------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self.state.clock

    def now(self) -> float:
        return float(self.clock.now())

    def stamp(self, t: float) -> int:
        """Unix seconds of clock instant ``t`` (objects show wall time; lifecycles run on monotonic time).

        The wall-minus-monotonic offset is taken once, so the same instant always shows the same second (a
        per-call offset jitters by microseconds and could flip ``int()`` between two reads of one object)."""
        if self._wall_offset is None:
            self._wall_offset = self.clock.wall() - self.clock.now()
        return int(t + self._wall_offset)

    def advance(self) -> None:
        """Bring every lifecycle to the clock's now (the app calls it before each request)."""
        if not (self.batches.pending or self.responses.pending or self.assistants.pending):
            return  # the common case on the hot path: nothing long-running is under way
        with self.lock:
            now = self.now()
            self.batches.advance(now, self)
            self.responses.advance(now, self)
            self.assistants.advance(now, self, self.stamp)

    def stats(self) -> dict[str, Any]:
        """Counts for ``/sim/stats``: objects by status, files, webhook deliveries."""
        with self.lock:
            return {
                "files": len(self.files),
                "batches": self.batches.counts(),
                "background_responses": self.responses.counts(),
                "runs": self.assistants.counts(),
                "webhooks": self.sender.describe() if self.sender is not None else None,
            }

    def busy(self) -> bool:
        with self.lock:
            return bool(self.batches.next_event() is not None or self.responses.active() or self.assistants.active())

    def _background_tick(self) -> bool:
        """Called by the webhook sender's thread so transitions (and their events) happen without polling."""
        self.advance()
        return self.busy()

    def wake(self) -> None:
        """An object was created: with webhooks on, keep a thread advancing time so its events get sent."""
        if self.sender is not None:
            self.sender.wake()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.stop()

    def create_background_response(self, org: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Queue a background response (the app already authenticated, validated and charged it): ``(200, the
        queued response object)``."""
        with self.lock:
            item = self.responses.create(org, dict(body), self.now(), self.config)
            obj = item.to_object(self.stamp)
        self.wake()
        return 200, obj

    # -- host protocols (BatchHost, BackgroundHost, AssistantsHost) ------------------------------------------

    def execute(
        self, endpoint: str, body: dict[str, Any], org: str, *, batch: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """``state.execute``: the sync responders without rate limiting; bills successes (50% for batch lines)."""
        return self.state.execute(endpoint, body, org, batch=batch)

    def add_file(
        self, org: str, filename: str, purpose: str, content: bytes, at: float, expires: float | None = None
    ) -> str:
        stamp = None if expires is None else self.stamp(expires)
        return self.files.add(org, filename, purpose, content, self.stamp(at), stamp).id

    def file_text(self, org: str, file_id: str) -> str | None:
        stored = self.files.get(org, file_id)
        return stored.text() if stored is not None else None

    def emit(self, event_type: str, object_id: str, at: float) -> None:
        if self.sender is not None:
            self.outbox.enqueue(event_type, object_id, self.stamp(at), self.now())
            self.sender.wake()
