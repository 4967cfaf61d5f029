"""The Files API with the official SDK: upload with purpose, retrieve, content, list, delete, and the real 400s."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import openai
import pytest
from longrun_helpers import EP, batch_lines, jsonl, upload
from openai import AsyncOpenAI, OpenAI

from ratepilot.sim import Simulator


def test_upload_retrieve_content_list_delete(client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    data = jsonl(batch_lines(2))
    created = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.object == "file"
    assert (created.filename, created.purpose, created.bytes, created.status) == (
        "requests.jsonl",
        "batch",
        len(data),
        "processed",
    )
    assert created.id.startswith("file-")
    assert created.expires_at is not None and created.expires_at - created.created_at == 30 * 86_400
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == data
    notes = client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="assistants")
    assert notes.expires_at is None
    assert [f.id for f in client.files.list()] == [notes.id, created.id]  # newest first
    assert [f.id for f in client.files.list(purpose="batch")] == [created.id]
    assert [f.id for f in client.files.list(order="asc", limit=1)] == [created.id, notes.id]  # pages followed
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    assert info.value.body == {
        "message": f"No such File object: {created.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }


def test_batch_purpose_needs_jsonl(client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("requests.json", io.BytesIO(b"{}")), purpose="batch")
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"


def test_bad_purpose_is_a_400(client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="nonsense")  # type: ignore[arg-type]
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "purpose"


def test_files_are_private_to_their_organization(sim: Simulator, client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    file_id = upload(client, jsonl(batch_lines(1)))
    with OpenAI(base_url=sim.base_url, api_key="sk-test-other-org-9999", max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(file_id)
        assert list(other.files.list()) == []


def test_batch_create_errors(client: OpenAI, longrun: Callable[..., Any]) -> None:
    longrun()
    notes = client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="assistants").id
    batch_file = upload(client, jsonl(batch_lines(1)))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"input_file_id": "file-missing"}, "input_file_id"),
        ({"input_file_id": notes}, "input_file_id"),
        ({"input_file_id": batch_file, "completion_window": "1h"}, "completion_window"),
        ({"input_file_id": batch_file, "endpoint": "/v1/images/variations"}, "endpoint"),
        ({"input_file_id": batch_file, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input_file_id": batch_file, "metadata": {"k": "v" * 513}}, "metadata.k"),
    ]
    for overrides, param in bad:
        kwargs: dict[str, Any] = {"endpoint": EP, "completion_window": "24h", **overrides}
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(**kwargs)
        assert isinstance(info.value.body, dict)
        assert info.value.body["param"] == param, info.value.body
    ok = client.batches.create(
        input_file_id=batch_file, endpoint=EP, completion_window="24h", metadata={f"k{i}": "v" for i in range(16)}
    )
    assert ok.metadata is not None and len(ok.metadata) == 16
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


async def test_async_client_round_trip(sim: Simulator, longrun: Callable[..., Any]) -> None:
    longrun()
    async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-test-async-0003", max_retries=0) as client:
        created = await client.files.create(file=("a.jsonl", io.BytesIO(jsonl(batch_lines(1)))), purpose="batch")
        batch = await client.batches.create(input_file_id=created.id, endpoint=EP, completion_window="24h")
        assert (await client.batches.retrieve(batch.id)).status == "validating"
        assert (await client.batches.cancel(batch.id)).status == "cancelling"
