"""A pre-imported process that forks one child per CLI run, so kill -9 tests do not pay the imports each time.

Protocol: one JSON object per stdin line, ``{"args": [...], "env": {...}, "out": path}``; for each, a child is
forked (the zygote has no threads, so forking is safe), runs ``ratepilot.cli.main()`` with those argv and
environment and its stdout+stderr sent to ``out``; the zygote answers ``{"returncode": n}`` (negative: killed
by that signal, like ``subprocess``).
"""

from __future__ import annotations

import json
import os
import sys

import openai  # noqa: F401 - imported once here, inherited by every child

import ratepilot.batch
import ratepilot.client  # noqa: F401
from ratepilot.cli import main


def _child(args: list[str], env: dict[str, str], out: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["ratepilot", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["args"], request["env"], request["out"])
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sys.stdout.write(json.dumps({"returncode": code}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
