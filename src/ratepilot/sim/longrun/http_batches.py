"""``/v1/batches``: create, retrieve, cancel, list."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from ..endpoints import BATCH_ENDPOINTS
from .batch_validation import validate_batch_input
from .http_common import Call, StoreGetter, api_error, guarded, json_response, not_found, read_json
from .pagination import PageError, paginate

__all__ = ["BATCH_ENDPOINTS", "batch_routes", "metadata_error"]


def metadata_error(metadata: Any) -> Response | None:
    """The real 400 for metadata that is not ≤ 16 string pairs (keys ≤ 64 chars, values ≤ 512 chars)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return api_error(400, "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type")
    if len(metadata) > 16:
        return api_error(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an "
            f"object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            return api_error(
                400,
                f"Invalid 'metadata': string too long. Expected a string with maximum length 64, but got a string "
                f"with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            return api_error(
                400,
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > 512:
            return api_error(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length 512, but got a "
                f"string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return None


def no_such_batch(batch_id: str) -> Response:
    return not_found(f"No batch found with id '{batch_id}'.")


async def create(call: Call) -> Response:
    store = call.store
    body = await read_json(call)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if name not in body:
            return api_error(
                400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
    endpoint = body["endpoint"]
    if endpoint not in BATCH_ENDPOINTS:
        allowed = ", ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
        return api_error(
            400,
            f"Invalid value: '{endpoint}'. Supported values are: {allowed}.",
            param="endpoint",
            code="invalid_value",
        )
    if body["completion_window"] != "24h":
        return api_error(
            400,
            f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    bad_metadata = metadata_error(body.get("metadata"))
    if bad_metadata is not None:
        return bad_metadata
    expires_after = body.get("output_expires_after")
    if expires_after is not None:
        seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
        anchor = expires_after.get("anchor") if isinstance(expires_after, dict) else None
        if anchor != "created_at" or not isinstance(seconds, int) or not 3600 <= seconds <= 2_592_000:
            return api_error(
                400,
                'Invalid \'output_expires_after\': expected {"anchor": "created_at", "seconds": N} with N '
                "between 3600 (1 hour) and 2592000 (30 days).",
                param="output_expires_after",
                code="invalid_value",
            )
    file_id = str(body["input_file_id"])
    cfg = store.config
    with store.lock:
        stored = store.files.get(call.org, file_id)
        if stored is None:
            return api_error(400, f"Invalid 'input_file_id': '{file_id}'. No such File object.", param="input_file_id")
        if stored.purpose != "batch":
            return api_error(
                400,
                f"Invalid 'input_file_id': '{file_id}'. The file has purpose '{stored.purpose}'; a batch input file "
                "must be uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        content = stored.content
    # Validation is the service's asynchronous work: its outcome shows when the batch leaves `validating`.
    validation = validate_batch_input(
        content,
        endpoint,
        max_requests=cfg.batch_max_requests,
        max_bytes=cfg.batch_max_bytes,
        max_embedding_inputs=cfg.batch_max_embedding_inputs,
    )
    with store.lock:
        batch = store.batches.create(
            org=call.org,
            endpoint=endpoint,
            input_file_id=file_id,
            completion_window="24h",
            metadata=body.get("metadata"),
            validation=validation,
            config=cfg,
            now=store.now(),
            output_expires_after=float(expires_after["seconds"]) if expires_after is not None else None,
        )
        obj = batch.to_object(store.stamp)
    store.wake()
    return json_response(obj)


async def retrieve(call: Call) -> Response:
    batch_id = call.request.path_params["batch_id"]
    store = call.store
    with store.lock:
        batch = store.batches.get(call.org, batch_id)
        if batch is None:
            return no_such_batch(batch_id)
        return json_response(batch.to_object(store.stamp))


async def cancel(call: Call) -> Response:
    batch_id = call.request.path_params["batch_id"]
    store = call.store
    with store.lock:
        batch = store.batches.get(call.org, batch_id)
        if batch is None:
            return no_such_batch(batch_id)
        if not batch.cancel(store.now()):
            return api_error(400, f"Cannot cancel a batch with status '{batch.status}'.", code="batch_not_cancellable")
        obj = batch.to_object(store.stamp)
    store.wake()
    return json_response(obj)


async def list_batches(call: Call) -> Response:
    store = call.store
    with store.lock:
        batches = store.batches.list(call.org)
        try:
            page = paginate(
                batches,
                dict(call.request.query_params),
                key=lambda b: b.id,
                render=lambda b: b.to_object(store.stamp),
                default_limit=store.config.batch_list_default_limit,
                max_limit=100,
                ordered=False,
            )
        except PageError as exc:
            return api_error(400, str(exc), param=exc.param)
    return json_response(page)


def batch_routes(store: StoreGetter) -> list[Route]:
    return [
        Route("/v1/batches", guarded(store, "/v1/batches", create), methods=["POST"]),
        Route("/v1/batches", guarded(store, "/v1/batches", list_batches), methods=["GET"]),
        Route("/v1/batches/{batch_id}", guarded(store, "/v1/batches/{id}", retrieve), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", guarded(store, "/v1/batches/{id}/cancel", cancel), methods=["POST"]),
    ]
