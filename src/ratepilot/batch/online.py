"""The ``--fallback online`` path: answer one straggler through the synchronous API with the same client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai import OpenAI

    from .runner import OnlineFallback

__all__ = ["sdk_fallback"]


def sdk_fallback(client: OpenAI) -> OnlineFallback:
    """An :data:`~ratepilot.batch.runner.OnlineFallback` posting through ``client`` (ideally ``pilot.wrap``-ped,
    so the stragglers are throttled and retried like any online request).

    Any HTTP answer — including a 4xx — becomes a response result; a request that got no answer raises (the
    Pilot's own errors, such as ``QuotaExhausted``, as themselves). The post is the runner's
    (:func:`ratepilot.run.sender.sdk_post`): one raw-SDK code path for both.
    """
    from ..run.sender import sdk_post

    def call(url: str, body: Mapping[str, Any]) -> tuple[int, str | None, Any]:
        answer = sdk_post(client, url, dict(body))
        result: Any = answer.body
        if answer.status_code >= 400 and not (isinstance(result, dict) and "error" in result):
            # A result line's error body is always {"error": {...}}, even when the server answered otherwise.
            result = {"error": result if isinstance(result, dict) else {"message": str(result)}}
        return answer.status_code, answer.request_id or None, result

    return call
