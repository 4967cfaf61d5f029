"""ratepilot's typed errors are the SDK's own exceptions too: `except openai.X` keeps working through a wrapped
client, against the real simulator, with the answer attached and the key nowhere in it."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from ratepilot.cli.exits import classify_exit
from ratepilot.client import Pilot
from ratepilot.client.sdk_errors import LOCAL_HEADER
from ratepilot.clock import FakeClock
from ratepilot.engine.sender import sdk_post
from ratepilot.errors import QuotaExhausted, RatePilotError, RequestTooLarge, RetriesExhausted
from ratepilot.exitcodes import ExitCode
from ratepilot.limits import Limiter
from ratepilot.retry import RetryPolicy
from ratepilot.sim import FaultConfig, Simulator
from ratepilot.sim.config import KeySpec

from .helpers import total_requests

# Not shaped like a real key (a project check flags those), long enough to show how it is redacted.
KEY = "test-key-sdk-errors-0123456789WXYZ"
MSG = [{"role": "user", "content": "hello there"}]


def _everything_about(exc: BaseException) -> str:
    """Every place a key could hide in an exception: its text, attributes, and the request it carries."""
    parts = [str(exc), repr(exc), repr(vars(exc)), repr(exc.args)]
    request = getattr(exc, "request", None)
    if request is not None:
        parts += [str(v) for v in request.headers.values()]
    response = getattr(exc, "response", None)
    if response is not None:
        parts += [str(v) for v in response.request.headers.values()]
    return " ".join(parts)


def _assert_key_free(exc: BaseException) -> None:
    assert KEY not in _everything_about(exc)
    assert KEY.encode() not in pickle.dumps(exc)


def test_quota_exhausted_is_a_rate_limit_error(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    sim = make_sim(credit_usd=0.0)
    with Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        except openai.RateLimitError as exc:
            caught = exc
    assert total_requests(sim) == 1  # never retried
    assert isinstance(caught, QuotaExhausted) and isinstance(caught, RatePilotError)
    # The SDK's attributes, from the original answer...
    assert caught.status_code == 429 and caught.response.status_code == 429
    assert isinstance(caught.response, httpx2.Response)
    assert caught.response.json()["error"]["code"] == "insufficient_quota"
    assert isinstance(caught.body, dict) and caught.body["code"] == "insufficient_quota"
    assert caught.request_id and caught.request_id == caught.response.headers["x-request-id"]
    assert caught.type == "insufficient_quota"
    # ... and ratepilot's, with its actionable message.
    assert caught.code == "insufficient_quota" and caught.model == "gpt-4o-mini"
    assert "plan and billing" in caught.message and str(caught) == caught.message
    # The request it carries says who asked, redacted.
    assert caught.request.headers["authorization"] == "Bearer sk-...WXYZ"
    _assert_key_free(caught)
    assert classify_exit(caught) is not None and classify_exit(caught)[0] == ExitCode.QUOTA


async def test_quota_exhausted_is_a_rate_limit_error_async(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    sim = make_sim(credit_usd=0.0)
    async with Pilot(clock=clock).wrap(AsyncOpenAI(base_url=sim.base_url, api_key=KEY)) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.embeddings.create(model="text-embedding-3-small", input="x")
    assert isinstance(info.value, QuotaExhausted)
    assert info.value.response.json()["error"]["code"] == "insufficient_quota"
    assert total_requests(sim) == 1


def test_request_too_large_is_a_rate_limit_error_from_the_server_and_before_sending(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    sim = make_sim(rpm=60, tpm=1_000)
    with Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client:
        # A fresh pilot does not know the limit: the server refuses, with the 429 the plain SDK would get.
        with pytest.raises(openai.RateLimitError) as served:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2_000)
        assert total_requests(sim) == 1
        # Now the limiter knows it: refused before sending, and still the same exception for SDK code.
        with pytest.raises(openai.RateLimitError) as local:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=3_000)
        assert total_requests(sim) == 1
    for exc in (served.value, local.value):
        assert isinstance(exc, RequestTooLarge) and exc.status_code == 429
        assert exc.body["code"] == "rate_limit_exceeded"
        assert exc.response.json()["error"]["message"].startswith("Request too large for gpt-4o-mini")
        _assert_key_free(exc)
    assert LOCAL_HEADER not in served.value.response.headers
    assert local.value.response.headers[LOCAL_HEADER] == "true"  # built here: nothing was sent
    assert (local.value.limit, local.value.requested) == (1_000, 3_000)
    assert "Limit 1000, Requested 3000" in local.value.response.json()["error"]["message"]


def test_retries_exhausted_on_5xx_is_an_internal_server_error(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    sim = make_sim(faults=FaultConfig(error_500=1.0))
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(1, max_attempts=3))
    with (
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client,
        pytest.raises(openai.InternalServerError) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    exc = info.value
    assert isinstance(exc, RetriesExhausted) and exc.attempts == 3 and total_requests(sim) == 3
    assert exc.status_code == 500 and exc.last_status == 500 and exc.response.status_code == 500
    assert exc.body["type"] == "server_error"
    _assert_key_free(exc)
    assert classify_exit(exc) is not None and classify_exit(exc)[0] == ExitCode.API_ERROR


def test_retries_exhausted_out_of_patience_is_a_rate_limit_error(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    """Another client took the minute; the server asks for ~60 s; with patience 5 s the request gives up."""
    sim = make_sim(rpm=1, tpm=100_000)
    pilot = Pilot(clock=clock, retry=RetryPolicy(patience=5.0), limiter=Limiter(clock=clock, start_burst=60.0))
    with (
        OpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as foreign,
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client,
    ):
        foreign.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    exc = info.value
    assert isinstance(exc, RetriesExhausted) and "patience" in exc.reason
    assert exc.body["code"] == "rate_limit_exceeded" and exc.response.headers.get("retry-after")
    assert total_requests(sim) == 2  # one refusal, then out of patience: not a second try
    _assert_key_free(exc)


def test_retries_exhausted_without_an_answer_is_a_connection_error(clock: FakeClock) -> None:
    # Port 9 (discard) is closed: nothing ever answers.
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(1))
    with (
        pilot.wrap(OpenAI(base_url="http://127.0.0.1:9/v1", api_key=KEY)) as client,
        pytest.raises(openai.APIConnectionError) as info,
    ):
        client.models.list()
    exc = info.value
    assert isinstance(exc, RetriesExhausted) and not isinstance(exc, openai.APITimeoutError)
    assert isinstance(exc.__cause__, httpx2.ConnectError) and exc.last_error is exc.__cause__
    assert str(exc.request.url) == "http://127.0.0.1:9/v1/models"
    assert exc.request.headers["authorization"] == "Bearer sk-...WXYZ"
    assert "Gave up after 2 attempt(s)" in exc.message and str(exc) == exc.message
    _assert_key_free(exc)


def test_retries_exhausted_on_timeouts_is_a_timeout_error(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    # The simulator withholds every answer; each attempt times out after 50 ms (real time: a socket timeout).
    sim = make_sim(faults=FaultConfig(stall=1.0, stall_s=30.0))
    pilot = Pilot(clock=clock, retry=RetryPolicy.seeded(1))
    with (
        pilot.wrap(OpenAI(base_url=sim.base_url, api_key=KEY, timeout=0.05)) as client,
        pytest.raises(openai.APITimeoutError) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    exc = info.value
    assert isinstance(exc, RetriesExhausted) and isinstance(exc.__cause__, httpx2.TimeoutException)
    assert exc.attempts == 2  # never answered: given up quickly (RetryPolicy.connect_attempts)
    _assert_key_free(exc)


def test_rejected_key_is_the_sdks_authentication_error(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    sim = make_sim(keys={"test-key-the-right-one-0000": KeySpec("org-right")})
    with (
        Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    # Handed to the SDK untouched (one call, never retried): the SDK's own exception, response attached.
    assert total_requests(sim) == 1
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    assert classify_exit(info.value) is not None and classify_exit(info.value)[0] == ExitCode.AUTH


def test_unknown_model_is_the_sdks_not_found_error(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    sim = make_sim()
    with (
        Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client,
        pytest.raises(openai.NotFoundError) as info,
    ):
        client.chat.completions.create(model="no-such-model", messages=MSG, max_tokens=5)
    assert total_requests(sim) == 1
    assert info.value.body["code"] == "model_not_found"


def test_invalid_request_is_the_sdks_bad_request_error(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    sim = make_sim()
    with (
        Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client,
        pytest.raises(openai.BadRequestError) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=[], max_tokens=5)
    assert total_requests(sim) == 1
    assert info.value.status_code == 400 and info.value.body["param"] == "messages"


def test_native_errors_survive_pickling(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    """Errors cross process boundaries (multiprocessing, Ray actors): they rebuild as themselves."""
    sim = make_sim(credit_usd=0.0)
    with (
        Pilot(clock=clock).wrap(OpenAI(base_url=sim.base_url, api_key=KEY)) as client,
        pytest.raises(QuotaExhausted) as info,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value) and isinstance(copy, openai.RateLimitError)
    assert (copy.message, copy.code, copy.status_code, copy.request_id) == (
        info.value.message,
        info.value.code,
        429,
        info.value.request_id,
    )
    assert copy.response.json() == info.value.response.json() and str(copy) == str(info.value)


def test_the_runners_sdk_sender_stops_on_quota_instead_of_recording_it(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    # A QuotaExhausted is an APIStatusError now: the sender must still raise it, not turn it into a result line.
    broke = make_sim(credit_usd=0.0)
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}
    with Pilot(clock=clock).wrap(OpenAI(base_url=broke.base_url, api_key=KEY)) as client:
        with pytest.raises(QuotaExhausted):
            sdk_post(client, "/v1/chat/completions", body)
        # An ordinary HTTP error is still an answer.
        answer = sdk_post(client, "/v1/chat/completions", {**body, "model": "no-such-model"})
    assert answer.status_code == 404
