"""Worker processes for the multi-process and foreign-traffic tests: the official SDK driven through a Limiter.

The client transport (``ratepilot.client``) is tested on its own; here the limiter is exercised directly
around ``with_raw_response`` calls, exactly as the transport uses it: acquire, send, settle, observe (or
settle 0, observe, ``refused`` with the evidence after a 429). Settling first matters: the server's headers
already include this request's actual usage, so a pending refund must not hide other clients' traffic.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

import openai

from ratepilot.limits import Cost, Limiter, Scope, key_id_for
from ratepilot.limits.learning import refusal_evidence
from ratepilot.protocol.errors import classify
from ratepilot.protocol.tokens import admission_cost
from ratepilot.retry import server_wait_hint

MODEL = "gpt-4o-mini"
BODY: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi " * 10}], "max_tokens": 24}


@dataclass(frozen=True)
class Record:
    sent: float  # time.monotonic (system-wide, so comparable across processes)
    status: int
    tokens: int
    done: float = 0.0  # when the response was in
    remaining_tokens: int = -1  # x-ratelimit-remaining-tokens of the response


def send_one(client: openai.OpenAI, limiter: Limiter, scope: Scope, cost: Cost, end: float) -> Record | None:
    grant = limiter.acquire(scope, cost)
    sent = limiter.clock.now()
    if sent >= end:
        limiter.cancel(grant)
        return None
    try:
        raw = client.chat.completions.with_raw_response.create(**BODY)
    except openai.APIStatusError as exc:
        headers = exc.response.headers
        limiter.settle(grant, 0)
        limiter.observe(scope, headers, sent, grant=grant)
        if exc.status_code == 429:
            info = classify(exc.status_code, exc.response.json(), headers)
            wait = server_wait_hint(info, headers) or 1.0
            evidence = refusal_evidence(info.message, info.type, headers, cost.tokens)
            limiter.refused(grant, wait, evidence=evidence, slow_down=info.code == "slow_down")
        return Record(sent, exc.status_code, 0, limiter.clock.now())
    usage = raw.parse().usage
    tokens = usage.total_tokens if usage else 0
    limiter.settle(grant, tokens)
    limiter.observe(scope, raw.headers, sent, grant=grant, answered=True)
    remaining = int(raw.headers.get("x-ratelimit-remaining-tokens", "-1"))
    return Record(sent, raw.status_code, tokens, limiter.clock.now(), remaining)


def run_threads(
    base_url: str, api_key: str, limiter: Limiter, threads: int, start: float, duration: float
) -> list[Record]:
    records: list[Record] = []
    lock = threading.Lock()
    scope = Scope(key_id_for(api_key), MODEL)
    cost = Cost(1, admission_cost("/v1/chat/completions", BODY))
    end = start + duration

    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:

        def loop() -> None:
            while True:
                rec = send_one(client, limiter, scope, cost, end)
                if rec is None:
                    return
                with lock:
                    records.append(rec)

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return records


def process_main(store_uri: str, api_key: str, inbox: Any, outbox: Any, barrier: Barrier, threads: int) -> None:
    """One worker process: wait for the simulator's URL, line up with the others, drive for ``duration``."""
    import time

    base_url, duration = inbox.get(timeout=120)
    try:
        limiter = Limiter(store_uri)
    except BaseException:
        barrier.abort()  # fail the test now rather than at the barrier's timeout
        raise
    try:
        barrier.wait(timeout=120)
        records = run_threads(base_url, api_key, limiter, threads, time.monotonic(), duration)
    finally:
        limiter.close()
    outbox.put([(r.sent, r.status, r.tokens, r.done, r.remaining_tokens) for r in records])


def warm_up_sdk() -> None:
    """Exercise the SDK's request/parse/error paths once against a mock transport.

    The first call in a process builds pydantic models and imports resource modules (about a second on a
    busy machine). Done in the parent before forking, the workers inherit it instead of each spending the
    learning probe's round trip on it.
    """
    import httpx2

    def handler(request: httpx2.Request) -> httpx2.Response:
        if b"fail" in request.content:
            return httpx2.Response(429, json={"error": {"message": "Rate limit", "type": "tokens", "code": None}})
        body = {
            "id": "chatcmpl-warm",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return httpx2.Response(200, json=body, headers={"x-ratelimit-limit-tokens": "1"})

    with (
        httpx2.Client(transport=httpx2.MockTransport(handler)) as http,
        openai.OpenAI(base_url="http://warm.invalid/v1", api_key="sk-test-warm", http_client=http, max_retries=0) as c,
    ):
        c.chat.completions.with_raw_response.create(**BODY).parse()
        with contextlib.suppress(openai.RateLimitError):
            c.chat.completions.with_raw_response.create(**{**BODY, "messages": [{"role": "user", "content": "fail"}]})
