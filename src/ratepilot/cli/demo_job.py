"""``ratepilot demo``: the embedded simulator and a realistic job, run online and through the Batch API.

The job: classify generated Senate hearing transcripts as nomination hearings (YES/NO). The simulator's
rule-based ``classify`` responder answers YES when a transcript considers a nomination, so the results can
be checked against the ground truth. The online run starts with a full bucket (the first minute's requests go
at once), then follows the refill rate with no 429s; the batch run gets the same answers at half the price.
Takes about 15-30 seconds; no network, no API key. It ends by writing the online job's report (``ratepilot
report``: charts of its rate against the limits, latency, cost) and printing where it is; the job's results, marker
and trace are kept next to it, so ``ratepilot report`` and ``ratepilot status`` can be tried on them.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["default_report_dir", "make_transcripts", "run_demo"]

_COMMITTEES = ["Armed Services", "Judiciary", "Foreign Relations", "Finance", "Commerce, Science, and Transportation"]
_NAMES = ["Jordan Avery", "Morgan Ellis", "Casey Whitfield", "Riley Navarro", "Taylor Brooks", "Quinn Harper"]
_POSTS = ["Deputy Secretary of Defense", "Ambassador to Japan", "Judge of the Ninth Circuit", "Under Secretary"]
_TOPICS = [
    "the budget request for fiscal year 2027",
    "oversight of pipeline safety",
    "the reauthorization of the Coast Guard",
    "cybersecurity of the electric grid",
    "drug pricing in Medicare",
]
_FILLER = [
    "The committee will come to order.",
    "I thank the witnesses for appearing today.",
    "Without objection, the full statements will be entered into the record.",
    "The ranking member is recognized for five minutes.",
    "We will now proceed to questions.",
]
SYSTEM = (
    "You read U.S. Senate hearing transcripts. Answer with one word, YES or NO: is this hearing about a nomination?"
)
PATTERN = r"(?i)consider the nomination of|the nominee"


def make_transcripts(n: int, seed: int = 7) -> list[tuple[str, bool]]:
    """``n`` synthetic transcripts and whether each is a nomination hearing (about a third are)."""
    rng = random.Random(seed)
    out: list[tuple[str, bool]] = []
    for i in range(n):
        committee = rng.choice(_COMMITTEES)
        nomination = rng.random() < 0.35
        lines = [f"Hearing {i + 1} before the Committee on {committee}."]
        if nomination:
            who, post = rng.choice(_NAMES), rng.choice(_POSTS)
            lines.append(f"We meet today to consider the nomination of {who} to be {post}.")
            lines.append(f"The nominee's family is with us today; welcome. {who}, please stand to be sworn.")
        else:
            lines.append(f"We meet today to examine {rng.choice(_TOPICS)}.")
        lines.extend(rng.sample(_FILLER, 3))
        out.append((" ".join(lines), nomination))
    return out


def _write_requests(path: Path, transcripts: list[tuple[str, bool]]) -> None:
    with open(path, "wb") as fh:
        for i, (text, _) in enumerate(transcripts):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                "max_tokens": 2,
                "temperature": 0,
            }
            line = {"custom_id": f"hearing-{i + 1}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(orjson.dumps(line) + b"\n")


def _accuracy(results: Path, transcripts: list[tuple[str, bool]]) -> tuple[int, int, int]:
    from ..results import read_results

    truth = {f"hearing-{i + 1}": nom for i, (_, nom) in enumerate(transcripts)}
    correct = yes = 0
    for line in read_results(results):
        answer = (line.get("response") or {}).get("body", {}).get("choices", [{}])[0].get("message", {}).get("content")
        said_yes = str(answer).strip().upper().startswith("YES")
        yes += said_yes
        correct += said_yes == truth[line["custom_id"]]
    return correct, yes, len(truth)


def default_report_dir() -> Path:
    """Where the demo keeps its report and the online job's files: ``<state dir>/demo``."""
    from ..paths import state_dir

    return state_dir() / "demo"


def run_demo(
    n: int = 240,
    rpm: int = 200,
    tpm: int = 400_000,
    *,
    console: Any = None,
    live: bool = True,
    realistic_n: int = 80,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the demo; print the summaries; return both summaries as dicts (for tests), and the report's path
    (``out["report"]``, in ``report_dir``, default :func:`default_report_dir`)."""
    from rich.console import Console
    from rich.panel import Panel

    from ..run.job import RunOptions, run_job
    from ..run.progress import LiveProgress, summary_table
    from ..sim import SimConfig, Simulator
    from ..sim.longrun import configure
    from ..sim.longrun.config import LongrunConfig

    console = console or Console()
    transcripts = make_transcripts(n)
    config = SimConfig(rpm=rpm, tpm=tpm, responder="classify", classify_pattern=PATTERN, latency_ms=40)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ratepilot-demo-") as tmp, Simulator(config) as sim:
        configure(sim.state, LongrunConfig(time_scale=400.0))  # a batch's minutes pass in a fraction of a second
        work = Path(tmp)
        requests = work / "hearings.jsonl"
        _write_requests(requests, transcripts)
        console.print(
            Panel.fit(
                f"simulator at {sim.base_url} - limits {rpm} requests/min, {tpm:,} tokens/min\n"
                f"job: classify {n} hearing transcripts as nomination hearings (YES/NO)\n"
                f"ideal time at these limits: {max(0.0, (n - rpm) / (rpm / 60)):.0f}s (first minute's capacity at "
                "once, then the refill rate)",
                title="ratepilot demo",
            )
        )
        for mode in ("online", "batch"):
            console.rule(f"[bold]{mode}")
            options = RunOptions(
                requests=requests,
                output=work / f"results-{mode}.jsonl",
                mode=mode,
                base_url=sim.base_url,
                api_key="sk-demo-0001",
                cache=False,  # show real work both times (a rerun would be free from the cache)
                batch_poll_interval_s=0.2,
                state_dir=work / "state",
            )
            started = time.monotonic()
            if live and console.is_terminal and mode == "online":
                progress = LiveProgress(console)
                with progress:
                    summary = run_job(options, on_progress=progress.update)
            else:
                summary = run_job(options)
            console.print(summary_table(summary))
            correct, yes, total = _accuracy(options.output, transcripts)
            console.print(
                f"{mode}: {correct}/{total} classified correctly ({yes} nomination hearings), "
                f"{time.monotonic() - started:.1f}s, cost ${summary.cost_usd:.5f}"
            )
            if mode == "online":
                console.print(_pace_line(options.output, rpm))
                kept = _keep(options.output, requests, report_dir or default_report_dir())
            out[mode] = summary.to_dict()
        stats = sim.stats()
        console.print(
            f"simulator: {stats['requests']['total']} HTTP requests, "
            f"{stats['rate_limited']['total']} rate-limited (429)"
        )
        out["sim"] = stats
        out["realistic"] = _realistic_act(console, work, transcripts[:realistic_n], rpm, tpm)
    out["report"] = str(_write_report(console, kept))
    return out


def _pace_line(results: Path, rpm: int) -> str:
    """The online job's pace in words, from its trace: the opening burst, then the sustained rate next to the limit
    (an average since the start would count the burst and read as a multiple of the limit)."""
    from ..report import load_job

    view = load_job(results)
    sustained = view.sustained()
    if sustained is None or not sustained.after_burst:
        return "online: the whole job fit in the opening burst (the first minute's capacity)"
    _, per_min, _, span, _ = sustained
    return (
        f"online: the opening burst (the first minute's capacity), then {per_min:,.0f} requests/min for "
        f"{span:.0f}s, against the limit of {rpm:,}/min"
    )


def _keep(results: Path, requests: Path, directory: Path) -> Path:
    """Copy the online job (requests, results, marker, trace) out of the demo's scratch directory, so that
    ``ratepilot report`` and ``ratepilot status`` can be tried on it afterwards."""
    import dataclasses

    from ..results import marker_path, read_marker
    from ..trace import trace_path

    directory.mkdir(parents=True, exist_ok=True)
    kept = directory / results.name
    kept_requests = directory / requests.name
    shutil.copyfile(requests, kept_requests)
    shutil.copyfile(results, kept)
    if trace_path(results).exists():
        shutil.copyfile(trace_path(results), trace_path(kept))
    marker = read_marker(results)
    if marker is not None:  # the copy's marker names the copy of the requests (the job id is their content's)
        marker_path(kept).write_bytes(dataclasses.replace(marker, requests=str(kept_requests)).to_json())
    return kept


def _write_report(console: Any, results: Path) -> Path:
    """``ratepilot report`` on the online job: the HTML file and the terminal summary; the path comes last."""
    from ..report import load_job, summary_table, write_report

    view = load_job(results)
    path = write_report(view, results.with_name("report.html"))
    console.rule("[bold]report (ratepilot report)")
    console.print(summary_table(view, str(path)))
    console.print(f"the job's files are kept: ratepilot status {results}", soft_wrap=True, highlight=False)
    console.print(f"report written: {path}", soft_wrap=True, highlight=False)  # last, whole: to open or copy
    return path


def _realistic_act(console: Any, work: Path, transcripts: list[tuple[str, bool]], rpm: int, tpm: int) -> dict[str, Any]:
    """The same job, online, against a simulator that enforces like the real API is documented to (``--realistic``:
    the minute enforced per second, refusals charged, some headers and retry-afters missing, a ramp limit)."""
    from ..run.job import RunOptions, run_job
    from ..run.progress import summary_table
    from ..sim import SimConfig, Simulator

    config = SimConfig.realistic(rpm=rpm, tpm=tpm, responder="classify", classify_pattern=PATTERN, latency_ms=40)
    requests = work / "hearings-realistic.jsonl"
    _write_requests(requests, transcripts)
    console.rule("[bold]online, realistic enforcement (ratepilot sim --realistic)")
    console.print(
        f"{len(transcripts)} transcripts; the server enforces {rpm}/min as {rpm / 60:.1f}/s, charges refusals, "
        "omits some headers and punishes fast ramps (429 slow_down)"
    )
    with Simulator(config) as sim:
        options = RunOptions(
            requests=requests,
            output=work / "results-realistic.jsonl",
            base_url=sim.base_url,
            api_key="sk-demo-0002",
            cache=False,
        )
        started = time.monotonic()
        summary = run_job(options)
        stats = sim.stats()
    console.print(summary_table(summary))
    correct, _, total = _accuracy(options.output, transcripts)
    refused = stats["rate_limited"]["total"]
    console.print(
        f"realistic: {correct}/{total} classified correctly, {time.monotonic() - started:.1f}s, "
        f"{refused} x 429 ({100 * refused / max(1, total):.1f} per 100 requests), nothing abandoned"
        if summary.done == total
        else f"realistic: {summary.done}/{total} done"
    )
    out = summary.to_dict()
    out["sim"] = stats
    return out
