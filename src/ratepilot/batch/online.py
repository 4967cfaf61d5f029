"""The ``--fallback online`` path: stragglers go through the online runner's concurrent engine.

:func:`sdk_fallback` is how one request is answered (a raw post through the same, ideally Pilot-wrapped,
client). :func:`answer_online` feeds a whole list of stragglers through :class:`ratepilot.engine.OnlineRunner` —
the engine of ``ratepilot run``: many requests in flight at once (its in-flight window follows the learned
limits), sent when the Pilot's limiter lets them go — instead of one after another. The client is synchronous,
so each post runs in a worker thread (:class:`FallbackSender`); the Pilot's limiter is shared by those threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.online import OnlineRunner, OnlineStats
from ..engine.sender import Answer, TransientFailure, sdk_post, unwrap_pilot_error
from ..engine.window import InFlightWindow
from ..errors import BudgetExceeded, QuotaExhausted
from ..requests import RequestLine
from ..results import ResultWriter

if TYPE_CHECKING:
    from openai import OpenAI

__all__ = [
    "FALLBACK_CONCURRENCY",
    "FallbackSender",
    "OnlineFallback",
    "SdkFallback",
    "answer_online",
    "sdk_fallback",
]

OnlineFallback = Callable[[str, Mapping[str, Any]], tuple[int, str | None, Any]]
"""``(url, body) -> (status_code, request_id, response_body)``: answers one request through the online API."""

FALLBACK_CONCURRENCY = 64
"""At most this many stragglers in flight (worker threads); the window starts lower and follows the limits."""


@dataclass(frozen=True)
class SdkFallback:
    """An :data:`OnlineFallback` posting through ``client`` (see :func:`sdk_fallback`);
    :meth:`answer` also keeps the response headers, so the online engine's window can follow the limits."""

    client: OpenAI

    def answer(self, url: str, body: Mapping[str, Any]) -> Answer:
        return sdk_post(self.client, url, dict(body))

    def __call__(self, url: str, body: Mapping[str, Any]) -> tuple[int, str | None, Any]:
        answer = self.answer(url, body)
        return answer.status_code, answer.request_id or None, answer.body


def sdk_fallback(client: OpenAI) -> OnlineFallback:
    """An :data:`OnlineFallback` posting through ``client`` (ideally ``pilot.wrap``-ped,
    so the stragglers are throttled and retried like any online request).

    Any HTTP answer — including a 4xx — becomes a response result; a request that got no answer raises (the
    Pilot's own errors, such as ``QuotaExhausted``, as themselves). The post is the runner's
    (:func:`ratepilot.engine.sender.sdk_post`): one raw-SDK code path for both.
    """
    return SdkFallback(client)


class FallbackSender:
    """A :class:`ratepilot.engine.Sender` over a synchronous :data:`OnlineFallback`: each post in a worker thread.

    Errors: the Pilot's quota and budget errors are raised as themselves (the engine stops on them) and the
    first one is kept in :attr:`stop_error` for the caller to re-raise; any other failure to get an answer is
    a :class:`~ratepilot.engine.sender.TransientFailure` (the request stays unanswered).
    """

    def __init__(self, fallback: OnlineFallback, *, workers: int = FALLBACK_CONCURRENCY) -> None:
        self.fallback = fallback
        self.stop_error: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ratepilot-fallback")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _post(self, url: str, body: Mapping[str, Any]) -> Answer:
        answer = getattr(self.fallback, "answer", None)
        if callable(answer):
            found = answer(url, body)
            assert isinstance(found, Answer)
            return found
        status, request_id, result = self.fallback(url, body)
        return Answer(status, request_id or "", result, {})

    async def send(self, request: RequestLine) -> Answer:
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._pool, self._post, request.url, request.body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a request that got no HTTP answer even after retries
            inner = unwrap_pilot_error(exc)
            if isinstance(inner, QuotaExhausted | BudgetExceeded):
                if self.stop_error is None:
                    self.stop_error = inner
                raise inner from None
            raise TransientFailure(f"no answer from the online API ({type(exc).__name__})") from None
        if answer.status_code >= 400 and not (isinstance(answer.body, dict) and "error" in answer.body):
            # A result line's error body is always {"error": {...}}, even when the server answered otherwise.
            body = answer.body
            wrapped = {"error": body if isinstance(body, dict) else {"message": str(body)}}
            answer = Answer(answer.status_code, answer.request_id, wrapped, answer.headers)
        return answer


def answer_online(fallback: OnlineFallback, requests: Iterable[RequestLine], target: Path) -> OnlineStats:
    """Answer ``requests`` through the online engine, appending their result lines to ``target`` in the order
    given (``ratepilot run``'s result-line format). Requests that got no answer have no line.

    Raises the Pilot's ``QuotaExhausted`` / ``BudgetExceeded`` after the engine stopped on it (what was
    answered before is in ``target``).
    """
    sender = FallbackSender(fallback)
    try:
        with ResultWriter(target) as writer:
            engine = OnlineRunner(
                sender, writer, ordered=True, window=InFlightWindow(ceiling=FALLBACK_CONCURRENCY), fail_fast=False
            )
            stats = asyncio.run(engine.run(requests))
    finally:
        sender.close()
    if stats.stop in ("quota", "budget") and sender.stop_error is not None:
        raise sender.stop_error
    return stats
