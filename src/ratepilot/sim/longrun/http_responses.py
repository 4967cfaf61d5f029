"""Background responses: ``GET /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel`` (the create is
``POST /v1/responses`` with ``background: true``, which the app hands to ``LongrunStore``)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from .http_common import Call, StoreGetter, api_error, guarded, json_response, not_found

__all__ = ["response_routes"]


def no_such_response(response_id: str) -> Response:
    return not_found(f"Response with id '{response_id}' not found.", param=None)


async def retrieve(call: Call) -> Response:
    response_id = call.request.path_params["response_id"]
    store = call.store
    with store.lock:
        item = store.responses.get(call.org, response_id)
        if item is None:
            return no_such_response(response_id)
        return json_response(item.to_object(store.stamp))


async def cancel(call: Call) -> Response:
    response_id = call.request.path_params["response_id"]
    store = call.store
    with store.lock:
        item = store.responses.get(call.org, response_id)
        if item is None:
            return no_such_response(response_id)
        if not item.cancel(store.now(), store):
            return api_error(400, f"Cannot cancel a response with status '{item.status}'.")
        return json_response(item.to_object(store.stamp))


def response_routes(store: StoreGetter) -> list[Route]:
    return [
        Route("/v1/responses/{response_id}", guarded(store, "/v1/responses/{id}", retrieve), methods=["GET"]),
        Route(
            "/v1/responses/{response_id}/cancel", guarded(store, "/v1/responses/{id}/cancel", cancel), methods=["POST"]
        ),
    ]
