"""The response cache you can see: `ratepilot cache stats|clear`, and `run --cache deterministic`, which keeps only
answers that asking again would not change."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from ratepilot.cache import ResponseCache, cache_key, deterministic
from ratepilot.cli import app
from ratepilot.cli.cache import parse_duration
from ratepilot.exitcodes import ExitCode
from ratepilot.sim import Simulator

KEY = "test-key-cache-0123456789"


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 5, **extra}


REQUESTS = [
    _chat("zero", temperature=0),
    _chat("zero too", temperature=0.0),
    _chat("warm", temperature=0.7),
    _chat("default temperature"),  # the API samples at 1
    {
        "custom_id": "emb",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "x"},
    },
]
DETERMINISTIC = 3  # the two temperature-0 chats and the embedding


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("http://h/v1/chat/completions", {"temperature": 0}, True),
        ("http://h/v1/chat/completions", {"temperature": 0.0}, True),
        ("http://h/v1/chat/completions", {"temperature": 0.2}, False),
        ("http://h/v1/chat/completions", {}, False),  # the API's default is 1
        ("http://h/v1/chat/completions", {"temperature": False}, False),  # not a number
        ("http://h/v1/responses", {"temperature": 0}, True),
        ("http://h/v1/embeddings", {"input": "x"}, True),
        ("http://h/v1/moderations", {"input": "x"}, True),
    ],
)
def test_what_counts_as_deterministic(endpoint: str, body: dict[str, Any], expected: bool) -> None:
    assert deterministic(endpoint, body) is expected
    key = cache_key(endpoint, body)
    assert key.deterministic is expected and key == cache_key(endpoint, dict(reversed(body.items())))


def test_keys_are_unchanged_so_existing_caches_keep_answering() -> None:
    import hashlib

    body = {"model": "m", "temperature": 0.5}
    old = hashlib.sha256(b"e\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
    assert cache_key("e", body) == old


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("12h", 43_200.0),
        ("7d", 604_800.0),
        ("2w", 1_209_600.0),
        ("1d12h", 129_600.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "7x", "d7", "1d 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def _write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def _run(sim: Simulator, requests: Path, output: Path, *extra: str) -> Any:
    args = ["run", str(requests), "-o", str(output), "--base-url", sim.base_url, "--api-key", KEY, "--json", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _stats() -> dict[str, Any]:
    result = CliRunner().invoke(app, ["cache", "stats", "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_run_cache_deterministic_keeps_only_deterministic_answers(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = make_sim()
    requests = _write(tmp_path / "req.jsonl", REQUESTS)
    first = _run(sim, requests, tmp_path / "a.jsonl", "--cache", "deterministic")
    assert first["succeeded"] == len(REQUESTS) and first["cache_hits"] == 0
    stats = _stats()
    assert stats["entries"] == DETERMINISTIC and stats["hits"] == 0
    assert stats["models"] == {"gpt-4o-mini": 2, "text-embedding-3-small": 1}

    sent = sim.stats()["requests"]["total"]
    again = _run(sim, requests, tmp_path / "b.jsonl", "--cache", "deterministic")
    assert again["cache_hits"] == DETERMINISTIC and again["succeeded"] == len(REQUESTS) - DETERMINISTIC
    assert sim.stats()["requests"]["total"] - sent == len(REQUESTS) - DETERMINISTIC  # the sampled ones, asked again
    stats = _stats()
    assert stats["hits"] == DETERMINISTIC and stats["saved_usd"] > 0 and stats["last_hit"] is not None
    assert stats["entries"] == DETERMINISTIC  # the sampled answers were not stored either

    # The default is unchanged: every answer is cached, temperature > 0 too.
    _run(sim, requests, tmp_path / "c.jsonl")
    assert _stats()["entries"] == len(REQUESTS)
    sent = sim.stats()["requests"]["total"]
    assert _run(sim, requests, tmp_path / "d.jsonl")["cache_hits"] == len(REQUESTS)
    assert sim.stats()["requests"]["total"] == sent


def test_no_cache_and_never(make_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    sim = make_sim()
    requests = _write(tmp_path / "req.jsonl", REQUESTS[:2])
    _run(sim, requests, tmp_path / "a.jsonl", "--no-cache")
    _run(sim, requests, tmp_path / "b.jsonl", "--cache", "never")
    assert _stats()["exists"] is False  # nothing was even opened
    conflict = CliRunner().invoke(
        app,
        ["run", str(requests), "-o", str(tmp_path / "c.jsonl"), "--api-key", KEY, "--no-cache", "--cache", "always"],
    )
    assert conflict.exit_code == ExitCode.BAD_INPUT and "contradicts" in conflict.output
    unknown = CliRunner().invoke(app, ["run", str(requests), "-o", str(tmp_path / "c.jsonl"), "--cache", "sometimes"])
    assert unknown.exit_code == ExitCode.BAD_INPUT and "--cache" in unknown.output


def _fill(path: Path, n: int, *, age_days: float = 0.0) -> None:
    """``n`` entries in the cache at ``path``, stored ``age_days`` ago (their timestamps moved back)."""
    from ratepilot.cache import CacheEntry

    endpoint = f"e-{age_days}"
    with ResponseCache(path) as cache:
        keys = [cache_key(endpoint, {"i": i}) for i in range(n)]
        cache.put_many(CacheEntry(k, endpoint, "m", "req", b'{"ok": true}', 0.001) for k in keys)
    db = sqlite3.connect(path)
    try:
        with db:
            db.execute(
                "UPDATE responses SET created_at = created_at - ? WHERE endpoint = ?", (age_days * 86_400, endpoint)
            )
    finally:
        db.close()


def test_clear_older_than_and_confirmation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ratepilot.cache import default_cache_path

    path = default_cache_path()
    _fill(path, 4, age_days=10)
    _fill(path, 3)
    runner = CliRunner()

    # No terminal and no --yes: refused, nothing deleted, said in JSON too.
    refused = runner.invoke(app, ["cache", "clear", "--older-than", "7d", "--json"])
    assert refused.exit_code == ExitCode.BAD_INPUT and "--yes" in json.loads(refused.stdout)["error"]["message"]
    assert _stats()["entries"] == 7

    old = runner.invoke(app, ["cache", "clear", "--older-than", "7d", "--yes", "--json"])
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["deleted"] == 4 and _stats()["entries"] == 3

    # A person at a terminal is asked; "no" deletes nothing.
    monkeypatch.setattr("ratepilot.cli.cache._can_ask", lambda: True)
    declined = runner.invoke(app, ["cache", "clear"], input="n\n")
    assert declined.exit_code == 0 and "nothing deleted" in declined.output and _stats()["entries"] == 3
    accepted = runner.invoke(app, ["cache", "clear"], input="y\n")
    assert accepted.exit_code == 0 and "deleted 3" in accepted.output
    assert _stats()["entries"] == 0 and _stats()["hits"] == 0

    bad = runner.invoke(app, ["cache", "clear", "--older-than", "soon", "--yes", "--json"])
    assert bad.exit_code == ExitCode.BAD_INPUT and "--older-than" in json.loads(bad.stdout)["error"]["message"]


def test_stats_text_and_a_corrupt_cache(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.sqlite3"
    _fill(path, 2)
    text = CliRunner().invoke(app, ["cache", "stats", "--cache-path", str(path)])
    assert text.exit_code == 0, text.output
    assert "entries" in text.output and "2 (m 2)" in text.output and "size on disk" in text.output

    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"this is not a database" * 100)
    result = CliRunner().invoke(app, ["cache", "stats", "--cache-path", str(broken), "--json"])
    assert result.exit_code == ExitCode.BAD_INPUT and "broken.sqlite3" in json.loads(result.stdout)["error"]["message"]
