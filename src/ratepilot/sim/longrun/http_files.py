"""``/v1/files``: multipart upload with ``purpose``, retrieve, content, delete, list."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.responses import Response
from starlette.routing import Route

from .files import UPLOAD_PURPOSES, StoredFile
from .http_common import Call, StoreGetter, api_error, guarded, json_response, not_found
from .pagination import PageError, paginate

__all__ = ["file_routes", "no_such_file"]


def no_such_file(file_id: str) -> Response:
    return not_found(f"No such File object: {file_id}")


async def upload(call: Call) -> Response:
    store = call.store
    async with call.request.form() as form:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            return api_error(
                400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
            )
        if not isinstance(purpose, str) or not purpose:
            return api_error(
                400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in UPLOAD_PURPOSES:
            allowed = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            return api_error(400, f"'{purpose}' is not one of [{allowed}] - 'purpose'", param="purpose")
        filename = upload.filename or "upload"
        if purpose == "batch" and not filename.endswith(".jsonl"):
            return api_error(400, "Invalid file format for Batch API. Must be .jsonl")
        content = await upload.read()
    if len(content) > store.config.file_max_bytes:
        return api_error(413, f"File is too large: {len(content)} bytes; the maximum is {store.config.file_max_bytes}.")
    with store.lock:
        now = store.now()
        expires = None
        if purpose == "batch":
            expires = store.stamp(now + store.config.clock_seconds(store.config.batch_file_expiry_seconds))
        stored = store.files.add(call.org, filename, purpose, content, store.stamp(now), expires)
    return json_response(stored.to_object())


def _live(call: Call, file_id: str) -> StoredFile | None:
    """The file, unless it does not exist or has expired (an expired file is deleted, as the API does)."""
    store = call.store
    with store.lock:
        stored = store.files.get(call.org, file_id)
        if stored is not None and stored.expires_at is not None and store.stamp(store.now()) >= stored.expires_at:
            store.files.delete(call.org, file_id)
            return None
    return stored


async def retrieve(call: Call) -> Response:
    file_id = call.request.path_params["file_id"]
    stored = _live(call, file_id)
    return no_such_file(file_id) if stored is None else json_response(stored.to_object())


async def content(call: Call) -> Response:
    file_id = call.request.path_params["file_id"]
    stored = _live(call, file_id)
    if stored is None:
        return no_such_file(file_id)
    return Response(stored.content, 200, media_type="application/octet-stream")


async def delete(call: Call) -> Response:
    file_id = call.request.path_params["file_id"]
    with call.store.lock:
        deleted = call.store.files.delete(call.org, file_id)
    if not deleted:
        return no_such_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


async def list_files(call: Call) -> Response:
    query = dict(call.request.query_params)
    with call.store.lock:
        files = call.store.files.list(call.org, query.get("purpose") or None)
    try:
        page = paginate(
            files, query, key=lambda f: f.id, render=lambda f: f.to_object(), default_limit=10_000, max_limit=10_000
        )
    except PageError as exc:
        return api_error(400, str(exc), param=exc.param)
    return json_response(page)


def file_routes(store: StoreGetter) -> list[Route]:
    return [
        Route("/v1/files", guarded(store, "/v1/files", upload), methods=["POST"]),
        Route("/v1/files", guarded(store, "/v1/files", list_files), methods=["GET"]),
        Route("/v1/files/{file_id}", guarded(store, "/v1/files/{id}", retrieve), methods=["GET"]),
        Route("/v1/files/{file_id}", guarded(store, "/v1/files/{id}", delete), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", guarded(store, "/v1/files/{id}/content", content), methods=["GET"]),
    ]
