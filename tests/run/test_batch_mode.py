"""--mode batch / auto: the Batch pipeline runs the job, its results land in the same results file."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ratepilot.results import read_results
from ratepilot.run import ExitCode, RunOptions, run_job
from ratepilot.sim import Simulator
from ratepilot.sim.longrun import configure
from ratepilot.sim.longrun.config import LongrunConfig

from .conftest import KEY


def test_auto_picks_batch_for_a_large_job_and_resumes_after_online_progress(
    make_sim: Callable[..., Simulator], requests_file: Callable[..., Path], tmp_path: Path
) -> None:
    sim = make_sim()
    configure(sim.state, LongrunConfig(time_scale=1000.0))  # a batch takes milliseconds
    req = requests_file(30)
    out = tmp_path / "out.jsonl"
    # Part of the job online first (budget stops it), then the rest through the Batch API, same file.
    first = run_job(RunOptions(req, out, base_url=sim.base_url, api_key=KEY, budget_usd=0.00002, cache=False))
    assert first.exit_code == ExitCode.BUDGET and 0 < first.done < 30
    summary = run_job(
        RunOptions(
            req,
            out,
            mode="auto",
            base_url=sim.base_url,
            api_key=KEY,
            batch_min_requests=10,
            batch_poll_interval_s=0.0,
            state_dir=tmp_path / "state",
        )
    )
    assert summary.mode == "batch" and "10" in summary.mode_reason, summary
    assert summary.exit_code == ExitCode.OK and summary.done == 30 and summary.already_done == first.done
    assert Counter(line["custom_id"] for line in read_results(out)) == Counter({f"req-{i}": 1 for i in range(30)})
    assert sim.stats()["requests"]["by_endpoint"].get("/v1/batches", 0) >= 1


def test_a_batch_job_whose_requests_all_failed_does_not_exit_0(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = make_sim()
    configure(sim.state, LongrunConfig(time_scale=1000.0))
    req = tmp_path / "req.jsonl"
    body = {"model": "gpt-nonexistent", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    req.write_text("".join(json.dumps(body) + "\n" for _ in range(4)))
    out = tmp_path / "out.jsonl"
    options = RunOptions(
        req, out, mode="batch", base_url=sim.base_url, api_key=KEY, batch_poll_interval_s=0.0, state_dir=tmp_path / "s"
    )
    summary = run_job(options)
    assert summary.exit_code == ExitCode.HTTP_ERRORS, summary
    assert summary.errors_by_code == {"404 model_not_found": 4}, summary
    assert "4 x 404 model_not_found" in summary.message
    assert len(list(read_results(out))) == 4
