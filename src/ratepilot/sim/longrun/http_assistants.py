"""The Assistants API v2 routes: assistants, threads, messages, runs (``OpenAI-Beta: assistants=v2``)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from .assistants import Run, Thread
from .http_batches import metadata_error
from .http_common import Call, StoreGetter, api_error, guarded, json_response, not_found, read_json
from .http_files import no_such_file
from .pagination import PageError, paginate

__all__ = ["assistants_routes"]

_BETA_MESSAGE = (
    "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try again by setting the "
    "header 'OpenAI-Beta: assistants=v2'."
)


def _beta_error(call: Call) -> Response | None:
    if "assistants=v2" not in (call.request.headers.get("openai-beta") or ""):
        return api_error(400, _BETA_MESSAGE, code="invalid_beta")
    return None


def _page(call: Call, items: list[Any], key: Any, render: Any) -> Response:
    try:
        return json_response(paginate(items, dict(call.request.query_params), key=key, render=render))
    except PageError as exc:
        return api_error(400, str(exc), param=exc.param)


def _run_headers(call: Call) -> dict[str, str] | None:
    ms = call.store.config.poll_after_ms
    return {"openai-poll-after-ms": str(ms)} if ms is not None else None


def _no_thread(thread_id: str) -> Response:
    return not_found(f"No thread found with id '{thread_id}'.")


def _no_assistant(assistant_id: str) -> Response:
    return not_found(f"No assistant found with id '{assistant_id}'.")


def _no_run(run_id: str) -> Response:
    return not_found(f"No run found with id '{run_id}'.")


def _objects_error(value: Any, param: str) -> Response | None:
    """The 400 for a parameter that must be an array of objects (absent is fine)."""
    if value is None or (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        return None
    return api_error(
        400, f"Invalid type for '{param}': expected an array of objects.", param=param, code="invalid_type"
    )


def _check_attachments(call: Call, messages: Any) -> Response | None:
    bad = _objects_error(messages, "messages")
    if bad is not None:
        return bad
    for message in messages or []:
        if not isinstance(message, dict):
            return api_error(400, "Invalid type for 'messages': expected an array of objects.", param="messages")
        if message.get("role", "user") not in ("user", "assistant"):
            return api_error(
                400,
                f"Invalid value: '{message.get('role')}'. Supported values are: 'user' and 'assistant'.",
                param="role",
                code="invalid_value",
            )
        if "content" not in message:
            return api_error(
                400, "Missing required parameter: 'content'.", param="content", code="missing_required_parameter"
            )
        content = message["content"]
        if not isinstance(content, str) and _objects_error(content, "content") is not None:
            return api_error(
                400,
                "Invalid type for 'content': expected a string or an array of objects.",
                param="content",
                code="invalid_type",
            )
        bad = _objects_error(message.get("attachments"), "attachments")
        if bad is not None:
            return bad
        for attachment in message.get("attachments") or []:
            file_id = attachment.get("file_id")
            if not isinstance(file_id, str):
                return api_error(
                    400,
                    "Missing required parameter: 'attachments.file_id'.",
                    param="attachments.file_id",
                    code="missing_required_parameter",
                )
            if call.store.files.get(call.org, file_id) is None:
                return no_such_file(file_id)
    return None


# -- assistants ------------------------------------------------------------------------------------------------


async def create_assistant(call: Call) -> Response:
    body = await read_json(call)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return api_error(400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    bad = metadata_error(body.get("metadata")) or _objects_error(body.get("tools"), "tools")
    if bad is not None:
        return bad
    store = call.store
    with store.lock:
        return json_response(store.assistants.create_assistant(call.org, body, store.stamp(store.now())))


async def retrieve_assistant(call: Call) -> Response:
    assistant_id = call.request.path_params["assistant_id"]
    with call.store.lock:
        found = call.store.assistants.assistant(call.org, assistant_id)
    return _no_assistant(assistant_id) if found is None else json_response(found)


async def update_assistant(call: Call) -> Response:
    assistant_id = call.request.path_params["assistant_id"]
    body = await read_json(call)
    bad = metadata_error(body.get("metadata")) or _objects_error(body.get("tools"), "tools")
    if bad is not None:
        return bad
    with call.store.lock:
        found = call.store.assistants.assistant(call.org, assistant_id)
        if found is None:
            return _no_assistant(assistant_id)
        for key in (
            "name",
            "description",
            "model",
            "instructions",
            "tools",
            "tool_resources",
            "metadata",
            "temperature",
            "top_p",
            "response_format",
        ):
            if key in body:
                found[key] = body[key]
        return json_response(found)


async def delete_assistant(call: Call) -> Response:
    assistant_id = call.request.path_params["assistant_id"]
    with call.store.lock:
        deleted = call.store.assistants.delete_assistant(call.org, assistant_id)
    if not deleted:
        return _no_assistant(assistant_id)
    return json_response({"id": assistant_id, "object": "assistant.deleted", "deleted": True})


async def list_assistants(call: Call) -> Response:
    with call.store.lock:
        items = call.store.assistants.list_assistants(call.org)
    return _page(call, items, lambda a: a["id"], lambda a: a)


# -- threads and messages --------------------------------------------------------------------------------------


def _create_thread(call: Call, body: dict[str, Any]) -> Thread | Response:
    messages = body.get("messages")
    bad = _check_attachments(call, messages) or metadata_error(body.get("metadata"))
    if bad is not None:
        return bad
    store = call.store
    now = store.now()
    return store.assistants.create_thread(call.org, body, now, store.stamp(now))


async def create_thread(call: Call) -> Response:
    body = await read_json(call)
    store = call.store
    with store.lock:
        thread = _create_thread(call, body)
        if isinstance(thread, Response):
            return thread
        return json_response(store.assistants.thread_object(thread, store.stamp))


async def retrieve_thread(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    store = call.store
    with store.lock:
        thread = store.assistants.thread(call.org, thread_id)
        if thread is None:
            return _no_thread(thread_id)
        return json_response(store.assistants.thread_object(thread, store.stamp))


async def delete_thread(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    with call.store.lock:
        deleted = call.store.assistants.delete_thread(call.org, thread_id)
    if not deleted:
        return _no_thread(thread_id)
    return json_response({"id": thread_id, "object": "thread.deleted", "deleted": True})


async def create_message(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    body = await read_json(call)
    store = call.store
    with store.lock:
        thread = store.assistants.thread(call.org, thread_id)
        if thread is None:
            return _no_thread(thread_id)
        bad = _check_attachments(call, [body]) or metadata_error(body.get("metadata"))
        if bad is not None:
            return bad
        if any(
            r.status in ("queued", "in_progress", "requires_action", "cancelling")
            for r in store.assistants.runs_of(call.org, thread_id)
        ):
            return api_error(400, f"Can't add messages to {thread_id} while a run is active.")
        return json_response(store.assistants.add_message(thread, body, store.stamp(store.now())))


async def list_messages(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    with call.store.lock:
        thread = call.store.assistants.thread(call.org, thread_id)
        if thread is None:
            return _no_thread(thread_id)
        messages = list(thread.messages)
    run_id = call.request.query_params.get("run_id")
    if run_id:
        messages = [m for m in messages if m.get("run_id") == run_id]
    return _page(call, messages, lambda m: m["id"], lambda m: m)


async def retrieve_message(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    message_id = call.request.path_params["message_id"]
    with call.store.lock:
        thread = call.store.assistants.thread(call.org, thread_id)
        if thread is None:
            return _no_thread(thread_id)
        found = next((m for m in thread.messages if m["id"] == message_id), None)
    return not_found(f"No message found with id '{message_id}'.") if found is None else json_response(found)


# -- runs ------------------------------------------------------------------------------------------------------


def _start_run(call: Call, thread: Thread, body: dict[str, Any]) -> Run | Response:
    store = call.store
    if body.get("stream"):
        return api_error(400, "Streaming runs are not supported by the simulator.", param="stream")
    assistant_id = body.get("assistant_id")
    if not isinstance(assistant_id, str):
        return api_error(
            400, "Missing required parameter: 'assistant_id'.", param="assistant_id", code="missing_required_parameter"
        )
    assistant = store.assistants.assistant(call.org, assistant_id)
    if assistant is None:
        return _no_assistant(assistant_id)
    if any(
        r.status in ("queued", "in_progress", "requires_action", "cancelling")
        for r in store.assistants.runs_of(call.org, thread.id)
    ):
        return api_error(400, f"Thread {thread.id} already has an active run.")
    extra_messages = body.get("additional_messages")
    bad = (
        _check_attachments(call, extra_messages)
        or metadata_error(body.get("metadata"))
        or _objects_error(body.get("tools"), "tools")
    )
    if bad is not None:
        return bad
    now = store.now()
    for message in extra_messages or []:
        store.assistants.add_message(thread, message, store.stamp(now))
    run = store.assistants.create_run(call.org, thread, assistant, body, now, store.config)
    return run


async def create_run(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    body = await read_json(call)
    store = call.store
    with store.lock:
        thread = store.assistants.thread(call.org, thread_id)
        if thread is None:
            return _no_thread(thread_id)
        run = _start_run(call, thread, body)
        if isinstance(run, Response):
            return run
        obj = run.to_object(store.stamp)
    store.wake()
    return json_response(obj, headers=_run_headers(call))


async def create_thread_and_run(call: Call) -> Response:
    body = await read_json(call)
    store = call.store
    with store.lock:
        if not isinstance(body.get("assistant_id"), str):
            return api_error(
                400,
                "Missing required parameter: 'assistant_id'.",
                param="assistant_id",
                code="missing_required_parameter",
            )
        if store.assistants.assistant(call.org, body["assistant_id"]) is None:
            return _no_assistant(body["assistant_id"])
        thread_body = body.get("thread") or {}
        if not isinstance(thread_body, dict):
            return api_error(400, "Invalid type for 'thread': expected an object.", param="thread")
        thread = _create_thread(call, thread_body)
        if isinstance(thread, Response):
            return thread
        run = _start_run(call, thread, {k: v for k, v in body.items() if k != "thread"})
        if isinstance(run, Response):
            return run
        obj = run.to_object(store.stamp)
    store.wake()
    return json_response(obj, headers=_run_headers(call))


async def retrieve_run(call: Call) -> Response:
    params = call.request.path_params
    store = call.store
    with store.lock:
        run = store.assistants.run(call.org, params["thread_id"], params["run_id"])
        if run is None:
            return _no_run(params["run_id"])
        return json_response(run.to_object(store.stamp), headers=_run_headers(call))


async def list_runs(call: Call) -> Response:
    thread_id = call.request.path_params["thread_id"]
    store = call.store
    with store.lock:
        if store.assistants.thread(call.org, thread_id) is None:
            return _no_thread(thread_id)
        runs = store.assistants.runs_of(call.org, thread_id)
        return _page(call, runs, lambda r: r.id, lambda r: r.to_object(store.stamp))


async def cancel_run(call: Call) -> Response:
    params = call.request.path_params
    store = call.store
    with store.lock:
        run = store.assistants.run(call.org, params["thread_id"], params["run_id"])
        if run is None:
            return _no_run(params["run_id"])
        if not store.assistants.cancel(run, store.now()):
            return api_error(400, f"Cannot cancel run with status '{run.status}'.")
        return json_response(run.to_object(store.stamp), headers=_run_headers(call))


async def submit_tool_outputs(call: Call) -> Response:
    params = call.request.path_params
    body = await read_json(call)
    store = call.store
    with store.lock:
        run = store.assistants.run(call.org, params["thread_id"], params["run_id"])
        if run is None:
            return _no_run(params["run_id"])
        outputs = body.get("tool_outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            return api_error(
                400,
                "Missing required parameter: 'tool_outputs'.",
                param="tool_outputs",
                code="missing_required_parameter",
            )
        problem = store.assistants.submit_tool_outputs(run, outputs, store.now())
        if problem is not None:
            return api_error(400, problem, param="tool_outputs")
        obj = run.to_object(store.stamp)
    store.wake()
    return json_response(obj, headers=_run_headers(call))


def assistants_routes(store: StoreGetter) -> list[Route]:
    def beta(endpoint: str, handler: Any) -> Any:
        async def checked(call: Call) -> Response:
            return _beta_error(call) or await handler(call)

        return guarded(store, endpoint, checked)

    t = "/v1/threads/{thread_id}"
    return [
        Route("/v1/assistants", beta("/v1/assistants", create_assistant), methods=["POST"]),
        Route("/v1/assistants", beta("/v1/assistants", list_assistants), methods=["GET"]),
        Route("/v1/assistants/{assistant_id}", beta("/v1/assistants/{id}", retrieve_assistant), methods=["GET"]),
        Route("/v1/assistants/{assistant_id}", beta("/v1/assistants/{id}", update_assistant), methods=["POST"]),
        Route("/v1/assistants/{assistant_id}", beta("/v1/assistants/{id}", delete_assistant), methods=["DELETE"]),
        Route("/v1/threads", beta("/v1/threads", create_thread), methods=["POST"]),
        Route("/v1/threads/runs", beta("/v1/threads/runs", create_thread_and_run), methods=["POST"]),
        Route(t, beta("/v1/threads/{id}", retrieve_thread), methods=["GET"]),
        Route(t, beta("/v1/threads/{id}", delete_thread), methods=["DELETE"]),
        Route(f"{t}/messages", beta("/v1/threads/{id}/messages", create_message), methods=["POST"]),
        Route(f"{t}/messages", beta("/v1/threads/{id}/messages", list_messages), methods=["GET"]),
        Route(
            f"{t}/messages/{{message_id}}", beta("/v1/threads/{id}/messages/{id}", retrieve_message), methods=["GET"]
        ),
        Route(f"{t}/runs", beta("/v1/threads/{id}/runs", create_run), methods=["POST"]),
        Route(f"{t}/runs", beta("/v1/threads/{id}/runs", list_runs), methods=["GET"]),
        Route(f"{t}/runs/{{run_id}}", beta("/v1/threads/{id}/runs/{id}", retrieve_run), methods=["GET"]),
        Route(f"{t}/runs/{{run_id}}/cancel", beta("/v1/threads/{id}/runs/{id}/cancel", cancel_run), methods=["POST"]),
        Route(
            f"{t}/runs/{{run_id}}/submit_tool_outputs",
            beta("/v1/threads/{id}/runs/{id}/submit_tool_outputs", submit_tool_outputs),
            methods=["POST"],
        ),
    ]
