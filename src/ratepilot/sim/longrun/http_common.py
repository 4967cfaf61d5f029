"""What every long-running endpoint does first: authenticate, count the request, parse the body.

Every call (create, retrieve, list, cancel, upload, download) costs one request in the organization-wide
bucket via ``state.charge`` — on the real API polling is not free, and the simulator makes that visible.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ...protocol.errors import error_body
from .store import LongrunStore

__all__ = ["Call", "Handler", "StoreGetter", "api_error", "guarded", "json_response", "not_found", "read_json"]


class Call:
    """An authenticated, admitted request: the store, the organization, the request itself."""

    __slots__ = ("org", "request", "store")

    def __init__(self, store: LongrunStore, org: str, request: Request) -> None:
        self.store = store
        self.org = org
        self.request = request


Handler = Callable[[Call], Awaitable[Response]]
StoreGetter = Callable[[], LongrunStore]
"""Returns the state's current store (looked up per request, so ``configure`` after app creation works)."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def api_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str = "invalid_request_error",
) -> Response:
    return json_response(error_body(message, type_, code, param), status)


def not_found(message: str, param: str | None = "id") -> Response:
    return api_error(404, message, param=param)


class BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("bad request")
        self.response = response


async def read_json(call: Call) -> dict[str, Any]:
    """The JSON object body; raises :class:`BadRequest` carrying the real 400 for anything else."""
    raw = await call.request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(
            api_error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                "JSON.)",
            )
        ) from None
    if not isinstance(body, dict):
        raise BadRequest(api_error(400, "Invalid type for request body: expected an object.", code="invalid_type"))
    return body


def guarded(store_of: StoreGetter, endpoint: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler``: authenticate (401), charge one request (429), then run it."""

    async def endpoint_fn(request: Request) -> Response:
        store = store_of()
        state = store.state
        org = state.authenticate(request)
        if isinstance(org, Response):
            return org
        refused = state.charge(org, None, 0, endpoint)
        if refused is not None:
            return refused
        try:
            return await handler(Call(store, org, request))
        except BadRequest as exc:
            return exc.response

    return endpoint_fn
