"""ratepilot's typed errors as the SDK's own exceptions, for code that catches ``openai.*Error``.

A wrapped client raises :class:`~ratepilot.errors.QuotaExhausted`, :class:`~ratepilot.errors.RequestTooLarge`
and :class:`~ratepilot.errors.RetriesExhausted` where the plain SDK would have raised its own exception for the
same answer. So that ``except openai.RateLimitError`` (or ``APIStatusError``, ``APIConnectionError``...) keeps
working through ``pilot.wrap(OpenAI())``, each is raised as a class here that derives from *both* ratepilot's
error and the SDK exception the SDK itself would have raised — chosen the way the SDK chooses it, by HTTP
status (``OpenAI._make_status_error``), or a connection / timeout error when no answer came. The instance
carries the SDK's attributes (``response``, ``body``, ``status_code``, ``request_id``, ``code``, ``type``,
``param``, ``request``) as well as ratepilot's, and ratepilot's actionable message.

* ``QuotaExhausted``, ``RequestTooLarge``: ``openai.RateLimitError`` (the server answers both with a 429). A
  request the limiter refuses as too large before sending (it already knows the limit) carries a locally
  built 429 whose body is the server's own wording, marked ``x-ratepilot-local: true``: the SDK alone would
  have sent it and got that answer, so an ``except openai.RateLimitError`` behaves the same either way.
* ``RetriesExhausted``: the SDK class of the last failed answer's status (429 ``RateLimitError``, 5xx
  ``InternalServerError``, 409 ``ConflictError``, other ``APIStatusError``), or ``APITimeoutError`` /
  ``APIConnectionError`` when the last attempt got no answer.

400, 401, 403 and 404 are not ratepilot errors: the wrapped client hands those answers to the SDK untouched
(one HTTP call, never retried), and the SDK raises its own ``BadRequestError``, ``AuthenticationError``,
``PermissionDeniedError``, ``NotFoundError``.

The attached request is a copy whose ``Authorization`` / ``api-key`` header is redacted (``sk-...abcd``): an
exception that reaches a log or an error reporter never carries the key. This module imports the SDK; the
exchange loads it only when the SDK is already loaded (a client of it is what raised).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import openai

from .. import errors
from .wire import key_free_request

__all__ = [
    "LOCAL_HEADER",
    "QuotaExhausted",
    "RequestTooLarge",
    "RetriesExhaustedConflict",
    "RetriesExhaustedConnection",
    "RetriesExhaustedServerError",
    "RetriesExhaustedStatus",
    "RetriesExhaustedTimeout",
    "RetriesExhaustedTooManyRequests",
    "retries_exhausted",
    "sdk_body",
    "sdk_response",
]

LOCAL_HEADER = "x-ratepilot-local"
"""Set to ``true`` on a response ratepilot built itself (nothing was sent): see :class:`RequestTooLarge`."""


class _Bridge(Exception):
    """Sits between ratepilot's error and the SDK's in the method resolution order.

    ``RatePilotError.__init__`` ends with ``super().__init__(message)``; in a class below, that call lands here
    and goes on to the SDK's own constructor (with the response, body or request the native class was given),
    so both halves are initialized by their own code and neither needs to know about the other.
    """

    _init_sdk: Callable[[str], None]

    def __init__(self, message: str) -> None:
        init = self.__dict__.pop("_init_sdk")
        init(message)
        # The SDK's connection errors word their own message; ratepilot's is the one a person can act on.
        self.message = message
        self.args = (message,)

    def __reduce__(self) -> tuple[Any, ...]:
        # The constructors need keyword arguments the default (``cls(*args)``) cannot give: rebuild from state,
        # so the error survives pickling (multiprocessing, Ray actors).
        return (_restore, (type(self), dict(self.__dict__)))


def _restore(cls: type[_Bridge], state: dict[str, Any]) -> _Bridge:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    obj.args = (state.get("message", ""),)
    return obj


def _status(obj: _Bridge, sdk: type[openai.APIStatusError], response: Any, body: object) -> None:
    def init(message: str) -> None:
        sdk.__init__(cast(Any, obj), message, response=response, body=body)

    obj._init_sdk = init


# ratepilot's ``code`` is always a string, the SDK's may be None: an instance always has one.
class QuotaExhausted(errors.QuotaExhausted, _Bridge, openai.RateLimitError):  # type: ignore[misc]
    """:class:`ratepilot.errors.QuotaExhausted` that is also an ``openai.RateLimitError``."""

    def __init__(self, code: str, *, response: Any, body: object, **kwargs: Any) -> None:
        _status(self, openai.RateLimitError, response, body)
        super().__init__(code, **kwargs)
        # The SDK's constructor read ``code`` from the body, which may name the billing problem in ``type``
        # only; ratepilot's code is always set.
        self.code = code


class RequestTooLarge(errors.RequestTooLarge, _Bridge, openai.RateLimitError):
    """:class:`ratepilot.errors.RequestTooLarge` that is also an ``openai.RateLimitError``."""

    def __init__(self, *, response: Any, body: object, **kwargs: Any) -> None:
        _status(self, openai.RateLimitError, response, body)
        super().__init__(**kwargs)


class _RetriesExhaustedStatus(errors.RetriesExhausted, _Bridge):
    _sdk: type[openai.APIStatusError] = openai.APIStatusError

    def __init__(self, *, response: Any, body: object, **kwargs: Any) -> None:
        _status(self, self._sdk, response, body)
        super().__init__(**kwargs)


class RetriesExhaustedTooManyRequests(_RetriesExhaustedStatus, openai.RateLimitError):
    """Out of patience waiting for rate-limit capacity (or a 429 that is not a rate limit kept coming)."""

    _sdk = openai.RateLimitError


class RetriesExhaustedServerError(_RetriesExhaustedStatus, openai.InternalServerError):
    """5xx answers until the retry policy's caps were reached."""

    _sdk = openai.InternalServerError


class RetriesExhaustedConflict(_RetriesExhaustedStatus, openai.ConflictError):
    """409 answers until the retry policy's caps were reached."""

    _sdk = openai.ConflictError


class RetriesExhaustedStatus(_RetriesExhaustedStatus, openai.APIStatusError):
    """Another retryable status (408, or ``x-should-retry: true``) until the caps were reached."""

    _sdk = openai.APIStatusError


class RetriesExhaustedConnection(errors.RetriesExhausted, _Bridge, openai.APIConnectionError):
    """Connection failures (nothing listening, DNS, TLS, dropped) until the caps were reached."""

    def __init__(self, *, request: Any, **kwargs: Any) -> None:
        def init(message: str) -> None:
            openai.APIConnectionError.__init__(self, message=message, request=request)

        self._init_sdk = init
        super().__init__(**kwargs)


class RetriesExhaustedTimeout(errors.RetriesExhausted, _Bridge, openai.APITimeoutError):
    """Timeouts until the caps were reached."""

    def __init__(self, *, request: Any, **kwargs: Any) -> None:
        def init(message: str) -> None:
            openai.APITimeoutError.__init__(self, request=request)

        self._init_sdk = init
        super().__init__(**kwargs)


# The SDK's own choice of class for an error status (OpenAI._make_status_error), for what ratepilot retries.
_BY_STATUS: Mapping[int, type[_RetriesExhaustedStatus]] = {
    409: RetriesExhaustedConflict,
    429: RetriesExhaustedTooManyRequests,
}


def retries_exhausted(
    *, response: Any = None, body: object = None, request: Any = None, timeout: bool = False, **kwargs: Any
) -> errors.RetriesExhausted:
    """The SDK-native :class:`~ratepilot.errors.RetriesExhausted` for the last failure: an answer
    (``response``, ``body``) or none (``request``; ``timeout`` when it timed out)."""
    if response is None:
        cls = RetriesExhaustedTimeout if timeout else RetriesExhaustedConnection
        return cls(request=request, **kwargs)
    status = int(response.status_code)
    by_status = RetriesExhaustedServerError if status >= 500 else _BY_STATUS.get(status, RetriesExhaustedStatus)
    return by_status(response=response, body=body, **kwargs)


def sdk_body(parsed: object, raw: bytes | None) -> object:
    """The ``body`` the SDK gives its exceptions: the ``error`` object of a JSON body, else the body itself
    (the text when it is not JSON)."""
    if isinstance(parsed, Mapping):
        return parsed.get("error", parsed)
    if parsed is not None:
        return parsed
    return (raw or b"").decode("utf-8", "replace").strip()


def sdk_response(lib: Any, request: Any, status: int, headers: Any, raw: bytes, *, local: bool = False) -> Any:
    """A read response (as the SDK's exceptions hold one) for a key-free copy of ``request``."""
    response = lib.Response(
        status,
        headers=headers,
        content=raw,
        request=key_free_request(lib, request),
    )
    if local:
        response.headers[LOCAL_HEADER] = "true"
    return response
