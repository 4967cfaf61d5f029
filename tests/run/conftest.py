"""Fixtures for the runner's tests: a real simulator, a requests-file writer, an isolated state dir."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from ratepilot.sim import SimConfig, Simulator

KEY = "sk-test-run-0123456789"
SECRET = "sk-" + "test-review-secret-0123456789"  # in two parts: nothing key-shaped in the source


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The response cache and batch state live in the state dir: never the user's ~/.ratepilot in tests.
    monkeypatch.setenv("RATEPILOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(**config: object) -> Simulator:
        config.setdefault("responder", "classify")
        sim = Simulator(SimConfig(**config))  # type: ignore[arg-type]
        sim.__enter__()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.__exit__(None, None, None)


def chat(i: int, text: str = "") -> dict[str, object]:
    content = text or f"Transcript {i}: the committee will consider the nomination. yes"
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 5}


@pytest.fixture
def requests_file(tmp_path: Path) -> Callable[..., Path]:
    def write(n: int, *, name: str = "req.jsonl", batch_lines: bool = True, extra: list[str] | None = None) -> Path:
        path = tmp_path / name
        with open(path, "wb") as fh:
            for i in range(n):
                line: dict[str, object] = (
                    {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat(i)}
                    if batch_lines
                    else chat(i)
                )
                fh.write(orjson.dumps(line) + b"\n")
            for raw in extra or []:
                fh.write(raw.encode() + b"\n")
        return path

    return write


@pytest.fixture
def wait_for_lines() -> Callable[[Path, int, float], int]:
    """Poll a results file (short real timeouts, like readiness polling) until it has ``n`` complete lines."""
    import threading
    import time

    def wait(path: Path, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        tick = threading.Event()
        count = 0
        while time.monotonic() < deadline:
            if path.exists():
                count = path.read_bytes().count(b"\n")
                if count >= n:
                    return count
            tick.wait(0.02)
        return count

    return wait
