"""What commands print for scripts: ``--json`` output, on every outcome, errors included.

A command given ``--json`` prints exactly one JSON document on stdout per result it reports, and when it fails,
an error object — also when the failure is a bad flag caught by the parser, or a bug::

    {"error": {"code": "quota", "message": "...", "exit_code": 3}}

``code`` is the :class:`~ratepilot.exitcodes.ExitCode` name in lower case, ``exit_code`` the process's exit
status; the human message still goes to stderr as without ``--json``. Numbers are rounded (:func:`rounded`).

:class:`JsonAwareCommand` does this for every command (``install`` sets it on the whole app, including
commands registered later by other modules): it knows whether ``--json`` was given, prints the error object
for parse errors, unexpected exceptions and Ctrl-C, and for a failing exit that printed no JSON through
:func:`print_json` (exits 6 and 10 report an outcome: the command's own document says it). A command's own
error paths call :func:`fail` (or :func:`json_error`) to give the precise message; commands print their JSON
with :func:`print_json`, so that the two are never both printed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand

from ratepilot.exitcodes import ExitCode

__all__ = [
    "JsonAwareCommand",
    "error_object",
    "fail",
    "install",
    "json_error",
    "json_mode",
    "print_json",
    "rounded",
]

JSON_FLAG = "--json"


@dataclass
class _State:
    enabled: bool
    printed: bool = False  # a JSON document went to stdout (a result or an error)


_state: ContextVar[_State | None] = ContextVar("ratepilot_cli_json", default=None)


def json_mode() -> bool:
    """Was ``--json`` given to the command running now?"""
    state = _state.get()
    return state is not None and state.enabled


def rounded(value: Any) -> Any:
    """``value`` with every float rounded, recursively: to 6 decimals (a millionth of a dollar, a microsecond),
    or below 0.001 to 3 significant digits (a simulator job's $0.000000825 stays itself, not 0.000001); NaN and
    infinities become null (JSON has none). Figures rounded more coarsely by their own ``to_dict`` stay so."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.3g}") if 0 < abs(value) < 0.001 else round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def print_json(obj: Any, *, err: bool = False) -> None:
    """One JSON document on one line (stdout; ``err``: stderr), numbers rounded."""
    state = _state.get()
    if state is not None and not err:
        state.printed = True
    typer.echo(json.dumps(rounded(obj), default=str), err=err)


def error_object(code: int, message: str) -> dict[str, Any]:
    try:
        name = ExitCode(code).name.lower()
    except ValueError:
        name = "error"
    return {"error": {"code": name, "message": message, "exit_code": int(code)}}


def json_error(code: int, message: str) -> None:
    """Under ``--json``, print the error object for this failure (the caller prints the human message)."""
    if json_mode():
        print_json(error_object(code, message))


def fail(message: str, code: int) -> typer.Exit:
    """Report a failure — ``error: message`` on stderr, and the error object under ``--json`` — and return the
    exit to raise."""
    typer.echo(f"error: {message}", err=True)
    json_error(code, message)
    return typer.Exit(code)


def _json_param(command: Any) -> str | None:
    for param in command.params:
        if JSON_FLAG in getattr(param, "opts", ()):
            return str(param.name)
    return None


@contextmanager
def _json_scope(enabled: bool) -> Iterator[_State]:
    state = _State(enabled)
    token = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(token)


class JsonAwareCommand(TyperCommand):
    """A command whose ``--json`` covers every outcome (see the module's docstring)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: the click Context typer vendors
        wants = _json_param(self) is not None and JSON_FLAG in args
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:  # a usage error: click reports it on stderr and exits 2
            if wants:
                print_json(error_object(_exit_code(exc), exc.format_message()))
            raise

    def invoke(self, ctx: Any) -> Any:
        name = _json_param(self)
        with _json_scope(bool(name and ctx.params.get(name))) as state:
            if not state.enabled:
                return super().invoke(ctx)
            try:
                return super().invoke(ctx)
            except typer.Exit as exc:
                if exc.exit_code not in _OUTCOMES and not state.printed:
                    # A failure whose path printed no JSON: say at least what the exit code means.
                    print_json(error_object(exc.exit_code, _meaning(exc.exit_code)))
                raise
            except typer.TyperException as exc:  # a bad flag value found by the command itself
                if not state.printed:
                    print_json(error_object(_exit_code(exc), exc.format_message()))
                raise
            except KeyboardInterrupt:
                print_json(error_object(ExitCode.INTERRUPTED, "interrupted: progress so far is kept"))
                raise
            except Exception as exc:  # a bug: the traceback still goes to stderr
                from ratepilot.errors import _scrub

                print_json(error_object(ExitCode.UNEXPECTED, _scrub(f"{type(exc).__name__}: {exc}")))
                raise


# Exit statuses that report an outcome (the command's result document says what happened), not an error.
_OUTCOMES = frozenset({ExitCode.OK, ExitCode.INCOMPLETE, ExitCode.HTTP_ERRORS})


def _exit_code(exc: typer.TyperException) -> int:
    return int(getattr(exc, "exit_code", ExitCode.BAD_INPUT))


def _meaning(code: int) -> str:
    meanings = {
        ExitCode.UNEXPECTED: "unexpected error",
        ExitCode.BAD_INPUT: "bad input: nothing was sent",
        ExitCode.QUOTA: "insufficient quota: progress kept",
        ExitCode.BUDGET: "budget reached: progress kept",
        ExitCode.CONFLICT: "the results file or job name belongs to another job",
        ExitCode.INCOMPLETE: "incomplete: rerun (or wait) to continue",
        ExitCode.AUTH: "the API key was rejected",
        ExitCode.API_ERROR: "the API refused the work or could not be reached",
        ExitCode.CANNOT_LISTEN: "cannot listen: the port is busy",
        ExitCode.HTTP_ERRORS: "done, but some results are HTTP errors",
        ExitCode.STORE_UNAVAILABLE: "the limiter store did not answer",
        ExitCode.WRITE_FAILED: "the results could not be written",
        ExitCode.INTERRUPTED: "interrupted: progress so far is kept",
    }
    try:
        return meanings.get(ExitCode(code), f"exit {code}")
    except ValueError:
        return f"exit {code}"


def install(app: typer.Typer) -> None:
    """Make every command of ``app`` (and of its sub-apps) a :class:`JsonAwareCommand`, unless it chose its own
    class. Call once every command is registered."""
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = JsonAwareCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            install(group.typer_instance)
