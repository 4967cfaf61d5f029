"""The demo runs end to end (small), and the progress display and summary table render."""

from __future__ import annotations

import io

from rich.console import Console

from ratepilot.cli.demo_job import make_transcripts, run_demo
from ratepilot.run import RunSummary
from ratepilot.run.progress import LiveProgress, summary_table


def test_demo_runs_online_and_batch_and_classifies_correctly() -> None:
    console = Console(file=io.StringIO(), width=120)
    out = run_demo(n=24, rpm=10_000, console=console, live=False)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "online: 24/24 classified correctly" in text and "batch: 24/24 classified correctly" in text
    assert out["online"]["exit_code"] == 0 and out["batch"]["exit_code"] == 0
    assert out["batch"]["cost_usd"] < out["online"]["cost_usd"]  # the Batch API at half price
    assert out["sim"]["rate_limited"]["total"] == 0


def test_transcripts_have_both_classes() -> None:
    labels = [nomination for _, nomination in make_transcripts(100)]
    assert 10 < sum(labels) < 90


def test_progress_and_summary_render() -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    summary = RunSummary("r.jsonl", "o.jsonl", "online", "--mode online", total=100, invalid_skipped=0, already_done=10)
    summary.done, summary.cost_usd, summary.limits = (
        40,
        0.01,
        {"requests": {"limit": 500, "remaining": 1, "reset_s": 1}},
    )
    progress = LiveProgress(console)
    with progress:
        progress.update(summary)
        summary.done = 60
        progress.update(summary)
        rendered = progress._render()
    console.print(rendered)
    console.print(summary_table(summary))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "60/100" in text and "req/min" in text and "/ 500" in text
    assert "60 of 100 done" in text and "10 from earlier runs" in text
