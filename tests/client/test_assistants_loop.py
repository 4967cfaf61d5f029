"""The classic Assistants loop, unchanged user code, through a wrapped client at a few requests per minute.

For each of 10 transcript files: create a thread, upload the file, add a message, create a run, poll
``runs.retrieve`` until it completes (no sleep anywhere in the user's code), read ``messages.list``, record
YES/NO. The pilot spaces every call — the polls included — so the simulator sees (almost) no 429s, no
``RateLimitError`` reaches the loop, and every file is classified right.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from openai import OpenAI

from ratepilot.client import Pilot
from ratepilot.clock import FakeClock
from ratepilot.sim import Simulator

from .helpers import billed_usd, sim_429s, total_requests

TERMINAL = {"completed", "failed", "cancelled", "expired", "requires_action", "incomplete"}
QUESTION = "Did the customer agree to renew the contract? Reply with one word."


def _transcripts(tmp_path: Path) -> dict[Path, str]:
    expected: dict[Path, str] = {}
    for i in range(10):
        agreed = i % 3 != 0
        answer = "yes, let's renew for another year" if agreed else "no, we will not renew"
        path = tmp_path / f"call_{i:02d}.txt"
        path.write_text(f"Agent: Shall we renew your contract for 2027?\nCustomer: {answer}.\nAgent: Noted, thanks.\n")
        expected[path] = "YES" if agreed else "NO"
    return expected


def classify_transcripts(client: OpenAI, assistant_id: str, paths: list[Path]) -> dict[Path, str]:
    """What a user writes today: straight-line code, no sleeps, no retry logic."""
    results: dict[Path, str] = {}
    for path in paths:
        thread = client.beta.threads.create()
        with path.open("rb") as fh:
            uploaded = client.files.create(file=fh, purpose="assistants")
        client.beta.threads.messages.create(
            thread.id,
            role="user",
            content=QUESTION,
            attachments=[{"file_id": uploaded.id, "tools": [{"type": "file_search"}]}],
        )
        run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant_id)
        while run.status not in TERMINAL:
            run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert run.status == "completed", run.last_error
        messages = client.beta.threads.messages.list(thread.id, order="desc", limit=1)
        part = messages.data[0].content[0]
        text = part.text.value if part.type == "text" else ""
        results[path] = "YES" if "YES" in text.upper() else "NO"
    return results


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the Assistants API is deprecated upstream
def test_assistants_loop_at_a_few_rpm(
    make_sim: Callable[..., Simulator], clock: FakeClock, api_key: str, tmp_path: Path
) -> None:
    sim = make_sim(rpm=4, tpm=100_000, responder="classify")
    expected = _transcripts(tmp_path)
    pilot = Pilot(clock=clock)
    start = clock.now()
    with pilot.wrap(OpenAI(base_url=sim.base_url, api_key=api_key)) as client:
        assistant = client.beta.assistants.create(model="gpt-4o-mini", instructions="Classify the transcript.")
        got = classify_transcripts(client, assistant.id, sorted(expected))
    assert got == expected  # all 10 right, and no exception (no RateLimitError) reached the loop
    assert sim_429s(sim) <= 1
    usage = pilot.usage()
    assert usage.requests == total_requests(sim)
    assert usage.rate_limited == sim_429s(sim)
    # ~61 calls at 4 per minute: the pilot waited ~15 minutes of (fake) time instead of the user sleeping.
    assert clock.now() - start >= (total_requests(sim) - 4) * 15.0 - 1.0
    assert pilot.limits("requests").server["requests"].limit == 4
    # Runs are billed when they complete; the pilot records each run's usage once, from the poll that saw it.
    assert usage.cost_usd == pytest.approx(billed_usd(sim), rel=1e-9)
