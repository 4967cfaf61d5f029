"""No input crashes the long-running endpoints: random JSON gets a 2xx or a 4xx with an OpenAI error body,
and the simulator keeps answering afterwards (tick runs before every request, so a poisoned object would
break everything)."""

from __future__ import annotations

import io
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from longrun_helpers import EP, batch_lines, jsonl, upload
from openai import OpenAI

from ratepilot.clock import FakeClock
from ratepilot.sim import Simulator

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "model",
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "messages",
    "content",
    "role",
    "attachments",
    "tools",
    "assistant_id",
    "additional_messages",
    "tool_outputs",
    "instructions",
    "max_completion_tokens",
    "thread",
    "stream",
]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5) | json_values


def test_random_bodies_never_crash(sim: Simulator, sim_clock: FakeClock, client: OpenAI) -> None:
    beta = {"OpenAI-Beta": "assistants=v2"}
    file_id = upload(client, jsonl(batch_lines(2)))
    notes = client.files.create(file=("n.txt", io.BytesIO(b"text")), purpose="assistants").id
    batch = client.batches.create(input_file_id=file_id, endpoint=EP, completion_window="24h").id
    assistant = client.post("/assistants", body={"model": "gpt-4o-mini"}, cast_to=dict, options={"headers": beta})
    thread = client.post("/threads", body={}, cast_to=dict, options={"headers": beta})
    paths = [
        "/v1/batches",
        f"/v1/batches/{batch}/cancel",
        "/v1/assistants",
        f"/v1/assistants/{assistant['id']}",
        "/v1/threads",
        "/v1/threads/runs",
        f"/v1/threads/{thread['id']}/messages",
        f"/v1/threads/{thread['id']}/runs",
        "/v1/responses",
    ]

    with httpx.Client(base_url=sim.url, headers={"authorization": f"Bearer {client.api_key}", **beta}) as http:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.sampled_from(paths), bodies, st.sampled_from([None, file_id, notes, "file-x"]))
        def one(path: str, body: Any, some_file: str | None) -> None:
            if isinstance(body, dict) and some_file is not None and "attachments" in body:
                body["attachments"] = [{"file_id": some_file}]
            response = http.post(path, json=body)
            assert response.status_code < 500, (path, body, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
            sim_clock.advance(5)

        one()
        # Still healthy: lifecycles advance and ordinary calls work.
        sim_clock.advance(100_000)
        assert http.get(f"/v1/batches/{batch}").status_code == 200
        assert http.get("/v1/batches").status_code == 200
        assert http.get(f"/v1/threads/{thread['id']}/messages").status_code == 200
