"""ratepilot.ray on a local Ray cluster: result columns, failures recorded per row, resuming, stops.

Real Ray actors, the real Redis, a real simulator over HTTP, the official SDK inside the actors. Nothing here
waits on a clock: the requests are few and the limits generous, except where a stop is the point.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from ray_helpers import KEY, MODEL, PROSE, chat, result_lines, write_requests

from ratepilot.exitcodes import ExitCode
from ratepilot.sim import Simulator

pytestmark = [
    # Ray Data's own DataContext() sets three of its deprecated fields itself on creation (ray 2.60); the
    # warnings are about Ray's internals, not anything this code sets.
    pytest.mark.filterwarnings(r"ignore:`use_push_based_shuffle` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`use_polars` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`use_arrow_tensor_v2` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("ray_cluster"),
]


def test_import_ratepilot_does_not_import_ray() -> None:
    code = "import sys, ratepilot; ratepilot.Pilot; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rows_become_batch_shaped_results_and_failures_never_raise(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator]
) -> None:
    from ratepilot.ray import RESULT_COLUMNS, PilotSettings, map_requests

    sim = make_sim(rpm=10_000, tpm=2_000)
    rows: list[dict[str, Any]] = [
        {"custom_id": f"ok-{i}", "body": json.dumps(chat(f"hello {i}")), "doc": i} for i in range(12)
    ]
    rows += [
        {"custom_id": "missing-model", "body": json.dumps({**chat("x"), "model": "no-such-model"}), "doc": 100},
        # ~2,500 tokens against a 2,000 TPM limit: "Request too large", never retried.
        {"custom_id": "too-large", "body": json.dumps(chat("word " * 2_500)), "doc": 101},
        {"custom_id": "not-json", "body": "{nope", "doc": 102},
        {"custom_id": "bad-url", "body": json.dumps(chat("x")), "url": "/v1/images/generations", "doc": 103},
        # Refused as `ratepilot run` refuses such a JSONL line: more than 2,048 inputs in one request.
        {
            "custom_id": "many-inputs",
            "body": json.dumps({"model": "text-embedding-3-small", "input": ["x"] * 2_049}),
            "doc": 104,
        },
    ]
    for row in rows:
        row.setdefault("url", None)  # one Arrow schema for every row
    ds = ray_cluster.data.from_items(rows, override_num_blocks=4)
    settings = PilotSettings(store=store, base_url=sim.base_url, api_key=KEY)

    out = {r["custom_id"]: r for r in map_requests(ds, settings, actors=2, batch_size=4).take_all()}

    assert len(out) == len(rows)
    for i in range(12):
        row = out[f"ok-{i}"]
        assert row["status_code"] == 200 and row["error"] is None and row["doc"] == i  # other columns carried
        assert json.loads(row["body"])["choices"][0]["message"]["content"] == "ok"
        assert row["request_id"].startswith("req_")
    assert set(RESULT_COLUMNS) <= set(out["ok-0"])
    missing = out["missing-model"]
    assert missing["status_code"] == 404 and json.loads(missing["body"])["error"]["code"] == "model_not_found"
    failed = {"too-large": "request_too_large", "not-json": "invalid_request", "bad-url": "invalid_request"}
    failed["many-inputs"] = "invalid_request"
    for cid, code in failed.items():
        assert out[cid]["status_code"] is None and json.loads(out[cid]["error"])["code"] == code, out[cid]
    assert KEY not in repr(out) and KEY not in repr(settings)
    # The actors shared one limiter: it learned the server's limits once, for every actor.
    assert sim.stats()["rate_limited"]["RPM"] == 0


def test_run_dataset_writes_results_and_resumes(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    from ratepilot.ray import PilotSettings, run_dataset

    sim = make_sim(rpm=10_000, tpm=1_000_000)
    requests = write_requests(tmp_path / "requests.jsonl", 30, batch_lines=False)  # bare bodies: ids line-N
    results = tmp_path / "results.jsonl"
    settings = PilotSettings(store=store, base_url=sim.base_url, api_key=KEY)

    first = run_dataset(requests, results, settings, actors=2)
    assert first.exit_code == ExitCode.OK, first.message
    assert (first.total, first.succeeded, first.done) == (30, 30, 30)
    lines = result_lines(results)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"line-{i}" for i in range(1, 31))
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in lines)
    assert first.cost_usd > 0

    # A crash after 18 results: the rerun sends exactly the 12 others.
    results.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines[:18]))
    sent_before = sim.stats()["requests"]["total"]
    second = run_dataset(requests, results, settings, actors=2)
    assert second.exit_code == ExitCode.OK, second.message
    assert (second.already_done, second.succeeded, second.done) == (18, 12, 30)
    assert sim.stats()["requests"]["total"] - sent_before == 12
    assert len({line["custom_id"] for line in result_lines(results)}) == 30

    third = run_dataset(requests, results, settings, actors=2)
    assert (third.exit_code, third.succeeded, third.done) == (ExitCode.OK, 0, 30)
    assert sim.stats()["requests"]["total"] - sent_before == 12  # nothing sent twice


def test_quota_exhaustion_stops_every_actor(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    from ratepilot.ray import PilotSettings, run_dataset

    # About ten requests' worth of credit (each ~10 prompt tokens and 1 output token of gpt-4o-mini).
    sim = make_sim(rpm=10_000, tpm=1_000_000, credit_usd=2e-5)
    requests = write_requests(tmp_path / "requests.jsonl", 300)
    results = tmp_path / "results.jsonl"
    settings = PilotSettings(store=store, base_url=sim.base_url, api_key=KEY, max_in_flight=4)

    report = run_dataset(requests, results, settings, actors=2, batch_size=8)

    assert report.stop == "quota" and report.exit_code == ExitCode.QUOTA, report
    assert "insufficient_quota" in report.message
    stats = sim.stats()
    # Each refused request was one HTTP call, made only by requests in flight when the first refusal came back:
    # at most every actor's in-flight slots, never a retry storm over the 300 rows.
    assert 1 <= stats["rate_limited"]["insufficient_quota"] <= 2 * 4
    assert stats["requests"]["total"] < 60
    lines = result_lines(results)
    assert lines and all(line["response"]["status_code"] == 200 for line in lines)  # refused rows: rerun
    assert report.done == len(lines) and report.not_started + report.unfinished + report.done <= 300


def test_budget_is_one_cap_for_all_actors(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    from ratepilot.ray import PilotSettings, run_dataset

    sim = make_sim(rpm=10_000, tpm=1_000_000)
    # Prompts of English prose, whose characters / 4 (the budget's estimate) are at least the tokens billed: the
    # worst case reserved before sending is then truly the worst (a 10-character prompt is billed more than its
    # estimate, for the chat format's own tokens, and a budget may be crossed by that difference).
    requests = write_requests(tmp_path / "requests.jsonl", 200, text=PROSE)
    results = tmp_path / "results.jsonl"
    budget = 2e-4  # ~12 requests at their worst case (~100 prompt + 2 output tokens of gpt-4o-mini)
    settings = PilotSettings(store=store, base_url=sim.base_url, api_key=KEY, budget_usd=budget, max_in_flight=4)

    report = run_dataset(requests, results, settings, actors=2, batch_size=8)

    assert report.stop == "budget" and report.exit_code == ExitCode.BUDGET, report
    billed = sum(org["cost_usd"] for org in sim.stats()["usage"].values())
    # Two actors, each with its own budget, could have spent twice as much: one cap in Redis spends it once.
    assert 0 < billed <= budget
    assert report.cost_usd == pytest.approx(billed)
    assert 5 <= report.succeeded == len(result_lines(results)) < 200

    # The budget belongs to the job: a rerun with the same budget counts what is on disk and sends nothing.
    sent = sim.stats()["requests"]["total"]
    again = run_dataset(requests, results, settings, actors=2, batch_size=8)
    assert again.exit_code == ExitCode.BUDGET and again.succeeded <= 1
    billed_again = sum(org["cost_usd"] for org in sim.stats()["usage"].values())
    assert billed_again <= budget and sim.stats()["requests"]["total"] - sent <= 1


def test_answers_are_the_same_lines_ratepilot_run_writes(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    """A results file begun by ``ratepilot run`` is finished by ``run_dataset`` (same job: the requests file)."""
    from ratepilot.ray import PilotSettings, run_dataset

    sim = make_sim(rpm=10_000, tpm=1_000_000)
    requests = write_requests(tmp_path / "requests.jsonl", 20, tag="m")
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "RATEPILOT_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "ratepilot", "run", str(requests), "-o", str(results), "--base-url", sim.base_url]
    subprocess.run([*cli, "--store", store, "--no-cache", "--quiet"], env=env, check=True, timeout=60)
    lines = result_lines(results)
    results.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines[:7]))

    report = run_dataset(requests, results, PilotSettings(store=store, base_url=sim.base_url, api_key=KEY), actors=2)

    assert (report.exit_code, report.already_done, report.succeeded) == (ExitCode.OK, 7, 13)
    finished = result_lines(results)
    assert sorted(line["custom_id"] for line in finished) == sorted(f"m-{i}" for i in range(20))
    assert {tuple(sorted(line)) for line in finished} == {("custom_id", "error", "id", "response")}
    assert {line["response"]["body"]["model"] for line in finished} == {MODEL}


def test_a_dataset_source_resumes_by_custom_id(
    ray_cluster: Any, store: str, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    """Any Dataset with custom_id and body (JSON text) runs the same way; rows already answered are left out."""
    from ratepilot.ray import PilotSettings, run_dataset
    from ratepilot.results import open_results, response_result

    sim = make_sim(rpm=10_000, tpm=1_000_000)
    results = tmp_path / "results.jsonl"
    with open_results(results, "dataset:nightly") as earlier:  # an earlier run of the job answered d-0 .. d-3
        for i in range(4):
            earlier.append(response_result(f"d-{i}", 200, "req_earlier", {"earlier": True}))
    rows = [{"custom_id": f"d-{i}", "body": json.dumps(chat(f"doc {i}"))} for i in range(10)]
    ds = ray_cluster.data.from_items(rows, override_num_blocks=2)

    settings = PilotSettings(store=store, base_url=sim.base_url, api_key=KEY)
    report = run_dataset(ds, results, settings, actors=2, name="nightly")

    assert (report.exit_code, report.already_done, report.succeeded, report.done) == (ExitCode.OK, 4, 6, 10)
    assert sim.stats()["requests"]["total"] == 6
    assert sorted(line["custom_id"] for line in result_lines(results)) == sorted(f"d-{i}" for i in range(10))


def test_a_store_that_does_not_answer_stops_before_anything_is_sent(
    ray_cluster: Any, make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    from ratepilot.ray import PilotSettings, run_dataset

    sim = make_sim()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = PilotSettings(store=f"redis://:hunter2@127.0.0.1:{port}/0", base_url=sim.base_url, api_key=KEY)

    report = run_dataset(write_requests(tmp_path / "requests.jsonl", 5), tmp_path / "results.jsonl", settings)

    assert (report.stop, report.exit_code, report.done) == ("store", ExitCode.STORE_UNAVAILABLE, 0)
    assert "hunter2" not in report.message and sim.stats()["requests"]["total"] == 0
