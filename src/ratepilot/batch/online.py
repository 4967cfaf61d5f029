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

    Any HTTP answer — including a 4xx — becomes a response result; only a request that got no answer raises.
    """
    import httpx2
    import openai

    def call(url: str, body: Mapping[str, Any]) -> tuple[int, str | None, Any]:
        path = url.removeprefix("/v1")
        try:
            response = client.post(path, cast_to=httpx2.Response, body=dict(body))
        except openai.APIStatusError as exc:
            error: Any = exc.body
            if not (isinstance(error, dict) and "error" in error):
                error = {"error": error if isinstance(error, dict) else {"message": str(exc)}}
            return exc.status_code, exc.request_id, error
        return response.status_code, response.headers.get("x-request-id"), response.json()

    return call
