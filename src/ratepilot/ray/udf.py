"""The actor side: :class:`PilotUDF`, a callable class for ``Dataset.map_batches`` (actor pool).

Each actor builds one :class:`~ratepilot.Pilot` on the shared Redis limiter store and one wrapped
``AsyncOpenAI`` client, on an event loop of its own (a background thread, so Ray may call the actor from any
thread, and several batches may be in flight on one actor). Every row of a batch is sent at once, bounded by
``max_in_flight``; *when* each goes out is the limiter's decision, and the limiter is shared by every actor on
every node (Redis), so the job as a whole stays under the organization's limits, learned from the server's
headers.

A row never raises: its result columns say what happened (:data:`RESULT_SCHEMA`). A stop (quota, budget, a
rejected key, the store gone) is published in Redis (:class:`~.settings.RunControl`); every actor sees it within
``STOP_POLL_S`` and answers its remaining rows with ``error.code = "stopped"`` without sending them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, NamedTuple, TypeVar

import orjson
import pyarrow as pa  # type: ignore[import-untyped]

from ..engine.sender import TransientFailure, sdk_apost
from ..errors import (
    BudgetExceeded,
    QuotaExhausted,
    RatePilotError,
    RequestTooLarge,
    RetriesExhausted,
    StoreUnavailable,
    _scrub,
)
from ..requests import SUPPORTED_URLS, body_problem, infer_url
from .settings import PilotSettings, RunControl

__all__ = ["FINAL_ERRORS", "REQUEST_COLUMNS", "RESULT_COLUMNS", "RESULT_SCHEMA", "PilotUDF"]

log = logging.getLogger("ratepilot.ray")

T = TypeVar("T")

RESULT_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("status_code", pa.int64()),  # null: no HTTP answer (see error)
        ("request_id", pa.string()),
        ("body", pa.string()),  # the response body as JSON text, as the server sent it (any status)
        ("error", pa.string()),  # null, or JSON text {"code", "message"} when there is no HTTP answer
    ]
)
"""The result columns, Batch-API-shaped: ``custom_id``, ``status_code``, ``request_id``, ``body``, ``error``.
Bodies are JSON text (one Arrow type whatever each response holds): ``json.loads(row["body"])``."""

RESULT_COLUMNS = tuple(RESULT_SCHEMA.names)

REQUEST_COLUMNS = ("custom_id", "method", "url", "body")
"""Input columns: ``custom_id`` and ``body`` (a JSON text, or a mapping) are required; ``url`` defaults to the
endpoint the body implies (as in ``ratepilot run``), ``method`` to POST. Any other column is carried over to the
output unchanged."""

FINAL_ERRORS = frozenset({"request_too_large", "invalid_request"})
"""Error codes of rows that can never succeed as they are: recorded in a results file, never asked again. Every
other error code (``retries_exhausted``, ``insufficient_quota``, ``budget_exceeded``, ``stopped``, ...) leaves the
row for a rerun."""

STOP_POLL_S = 0.25  # how often a busy actor looks for a stop published by another actor


class _Result(NamedTuple):
    custom_id: str
    status_code: int | None
    request_id: str | None
    body: str | None
    error: str | None


def _error(custom_id: str, code: str, message: str) -> _Result:
    return _Result(custom_id, None, None, None, orjson.dumps({"code": code, "message": _scrub(message)}).decode())


def _stopped(custom_id: str, stop: tuple[str, str]) -> _Result:
    reason, message = stop
    return _error(custom_id, "stopped", f"not sent: the job stopped ({reason}). {message}".strip())


def _request_of(row: Mapping[str, Any], index: int) -> tuple[str, str, dict[str, Any]] | _Result:
    """(custom_id, url, body) of a row, or the ``invalid_request`` result saying what is wrong with it."""
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error(f"row-{index}", "invalid_request", "the row has no custom_id (a non-empty string)")
    body = row.get("body")
    if isinstance(body, str | bytes):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(custom_id, "invalid_request", f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(custom_id, "invalid_request", "body must be a JSON object (text) or a mapping")
    method = row.get("method") or "POST"
    if method != "POST":
        return _error(custom_id, "invalid_request", f"method must be POST, got {method!r}")
    url = row.get("url") or infer_url(body)
    if url not in SUPPORTED_URLS:
        return _error(
            custom_id, "invalid_request", f"unsupported url {url!r}: one of {', '.join(sorted(SUPPORTED_URLS))}"
        )
    problem = body_problem(url, body)  # what `ratepilot run` refuses in a JSONL line, refused here too
    if problem is not None:
        return _error(custom_id, "invalid_request", problem)
    return custom_id, url, body


def _as_table(batch: Any) -> Any:
    """A ``pyarrow.Table`` from any of Ray Data's batch formats (pyarrow, pandas, a dict of numpy arrays)."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, Mapping):
        return pa.Table.from_pydict({name: list(values) for name, values in batch.items()})
    return pa.Table.from_pandas(batch, preserve_index=False)


def _output(table: Any, results: list[_Result]) -> Any:
    out = pa.Table.from_pylist([r._asdict() for r in results], schema=RESULT_SCHEMA)
    consumed = set(REQUEST_COLUMNS) | set(RESULT_COLUMNS)
    for i, name in enumerate(table.column_names):
        if name not in consumed:
            out = out.append_column(table.schema.field(i), table.column(i))
    return out


class _Sending:
    """Everything asynchronous of one actor; lives on, and is only touched from, the actor's event loop."""

    def __init__(self, settings: PilotSettings, pilot: Any, client: Any, control: RunControl) -> None:
        self.settings = settings
        self.pilot = pilot
        self.client = client
        self.control = control
        self.stop: tuple[str, str] | None = None
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._active: set[asyncio.Task[_Result]] = set()
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: PilotSettings) -> _Sending:
        from openai import AsyncOpenAI

        from ..client import Pilot
        from ..client.shared_budget import SharedBudget
        from ..limits import Limiter
        from ..retry import RetryPolicy

        key = settings.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ValueError("no API key: give PilotSettings(api_key=...) or set OPENAI_API_KEY on every node")
        base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        limiter = Limiter(store=settings.store, **dict(settings.limiter_options))
        pilot = Pilot(limiter=limiter, retry=RetryPolicy(patience=settings.patience_s))
        if settings.budget_usd is not None:
            # One ledger for every actor of the job: four actors with budget_usd=10 spend 10 between them.
            pilot.budget = SharedBudget(
                settings.store, settings.job, settings.budget_usd, spent_usd=settings.budget_spent_usd
            )
        client = pilot.wrap(
            AsyncOpenAI(base_url=base_url, api_key=key, timeout=settings.request_timeout_s, max_retries=0)
        )
        return cls(settings, pilot, client, RunControl(settings))

    async def send_all(self, rows: list[dict[str, Any]]) -> list[_Result]:
        if self.stop is None:
            self.stop = await asyncio.to_thread(self._published)
        tasks = [asyncio.create_task(self._one(row, i)) for i, row in enumerate(rows)]
        self._active.update(tasks)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._active.difference_update(tasks)
        return [self._outcome(row, i, o) for i, (row, o) in enumerate(zip(rows, outcomes, strict=True))]

    def _outcome(self, row: Mapping[str, Any], index: int, outcome: _Result | BaseException) -> _Result:
        if isinstance(outcome, _Result):
            return outcome
        custom_id = str(row.get("custom_id") or f"row-{index}")
        if isinstance(outcome, asyncio.CancelledError):  # cancelled by a stop (see _halt and _watch)
            return _stopped(custom_id, self.stop or ("stopped", ""))
        # A bug, or something nobody foresaw: the row says so (key-scrubbed), the pipeline goes on.
        what = _scrub(f"{type(outcome).__name__}: {outcome}")
        log.error("ratepilot.ray: request %s failed unexpectedly: %s", custom_id, what)
        return _error(custom_id, "unexpected_error", what)

    async def _one(self, row: Mapping[str, Any], index: int) -> _Result:
        parsed = _request_of(row, index)
        if isinstance(parsed, _Result):
            return parsed
        custom_id, url, body = parsed
        async with self._slots:
            if self.stop is not None:
                return _stopped(custom_id, self.stop)
            try:
                answer = await sdk_apost(self.client, url, body)
            except QuotaExhausted as exc:
                await self._halt("quota", exc.message)
                return _error(custom_id, exc.code, exc.message)
            except BudgetExceeded as exc:
                await self._halt("budget", exc.message)
                return _error(custom_id, "budget_exceeded", exc.message)
            except StoreUnavailable as exc:
                await self._halt("store", exc.message)
                return _error(custom_id, "store_unavailable", exc.message)
            except RequestTooLarge as exc:
                return _error(custom_id, "request_too_large", exc.message)
            except (RetriesExhausted, TransientFailure) as exc:
                return _error(custom_id, "retries_exhausted", exc.message)
            except RatePilotError as exc:
                return _error(custom_id, "failed", exc.message)
        status = answer.status_code
        if status in (401, 403):
            # The key is wrong for every row, not this one: stop the job (the row keeps the server's answer).
            await self._halt("auth", f"HTTP {status} from the server: the API key was rejected")
        return _Result(custom_id, status, answer.request_id or None, orjson.dumps(answer.body).decode(), None)

    def _published(self) -> tuple[str, str] | None:
        try:
            return self.control.stopped()
        except StoreUnavailable as exc:
            log.warning("ratepilot.ray: cannot read the job's stop flag (%s)", exc)
            return None

    async def _halt(self, reason: str, message: str) -> None:
        """Stop this job everywhere: here at once, on every other actor within ``STOP_POLL_S``."""
        first = self.stop is None
        if first:
            self.stop = (reason, message)
            log.warning("ratepilot.ray: stopping the job (%s): %s", reason, _scrub(message))
        self._cancel_waiting()
        if first:
            try:
                await asyncio.to_thread(self.control.stop, reason, message)
            except StoreUnavailable as exc:  # the store is what failed: the other actors will meet it too
                log.warning("ratepilot.ray: cannot publish the stop (%s)", exc)

    def _cancel_waiting(self) -> None:
        """After a stop that nothing can outlive (quota, a rejected key, the store), the rows still waiting for
        the limiter would only fail the same way: cancel them (their reservations are given back). After the
        budget, requests already admitted (their worst case reserved) finish, as in ``ratepilot run``."""
        if self.stop is None or self.stop[0] == "budget":
            return
        current = asyncio.current_task()
        for task in self._active:
            if task is not current:
                task.cancel()

    async def _watch(self) -> None:
        while self.stop is None:
            await asyncio.sleep(STOP_POLL_S)
            if self._active:
                found = await asyncio.to_thread(self._published)
                if found is not None and self.stop is None:
                    self.stop = found
                    self._cancel_waiting()

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.client.close()
        self.control.close()
        budget = self.pilot.budget
        if budget is not None and hasattr(budget, "close"):
            budget.close()
        await asyncio.to_thread(self.pilot.close)


class PilotUDF:
    """``ds.map_batches(PilotUDF, fn_constructor_kwargs={"settings": settings}, compute=ActorPoolStrategy(...))``.

    Input rows: :data:`REQUEST_COLUMNS`; output rows: :data:`RESULT_SCHEMA` plus the input's other columns, one
    output row per input row, in order. :func:`ratepilot.ray.map_requests` makes this call with good defaults.
    """

    def __init__(self, settings: PilotSettings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ratepilot-ray-loop", daemon=True)
        self._thread.start()
        self._sending = self._run(_Sending.open(settings))

    def __call__(self, batch: Any) -> Any:
        table = _as_table(batch)
        results = self._run(self._sending.send_all(table.to_pylist()))
        return _output(table, results)

    def close(self) -> None:
        """Close the client and the limiter (sending deferred settles). Ray ends actors without calling it;
        call it when using the class outside Ray."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._sending.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
