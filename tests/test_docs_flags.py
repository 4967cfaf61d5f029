"""Every command-line flag is documented: each option of every command registered in the typer app (whatever
commands exist when the test runs) appears, as ``--flag``, in README.md or docs/*.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import typer

from ratepilot.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _docs() -> str:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def _walk(command: object, path: str) -> Iterator[tuple[str, str]]:
    """``(command path, --long-flag)`` for every option of ``command`` and its subcommands."""
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") != "option":
            continue
        for flag in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if flag.startswith("--") and flag != "--help":
                yield path, flag
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, f"{path} {name}")


def _flags() -> list[tuple[str, str]]:
    return sorted(set(_walk(typer.main.get_command(app), "ratepilot")))


def test_the_walk_finds_every_command() -> None:
    commands = {path for path, _ in _flags()}
    for expected in ("ratepilot run", "ratepilot batch submit", "ratepilot sim", "ratepilot cache clear"):
        assert expected in commands
    assert ("ratepilot run", "--cache-path") in _flags() and ("ratepilot sim", "--no-charge-refusals") in _flags()


def test_every_flag_is_documented() -> None:
    docs = _docs()
    missing = [
        f"{path} {flag}" for path, flag in _flags() if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", docs)
    ]
    assert not missing, "undocumented flags (add them to README.md or docs/*.md):\n" + "\n".join(missing)
