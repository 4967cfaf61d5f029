"""The cheapest lane that meets the deadline: the tier router against all-standard, all-flex and the Batch API.

    python bench/tiers.py --quick     # ~35 s: 100 requests
    python bench/tiers.py             # 300 requests

**A scale model.** Waiting an hour or a day is not a benchmark, so the world runs faster, uniformly: one second
here stands for three minutes of the real API (``SCALE = 180``). The simulator's Batch API runs ``SCALE`` times
faster (``LongrunConfig(time_scale=SCALE)``, so its 24 h window is 480 s here); a flex answer takes 0.33 s (a
minute of real flex time, the slow end of "seconds to a minute"); the router is told so (``flex_answer_s``), and
``batch_window_s`` is the scaled window. The online rate limits are not scaled, and enforced as the simulator's
realistic preset does (``SimConfig.realistic``): 2,400 RPM also per second (40 requests/s), refused requests
charged, headers and ``retry-after`` sometimes missing, a ramp limit. The job's standard lane takes a few seconds.

**Flex is unavailable** (429 "Resource Unavailable", unbilled) from second 1.5 to second 19 of every run (an
outage of 52 minutes in the real world, once the job is under way), and 2% of the time outside it. The Batch API
takes 1.5 real hours for the job (30 s here).

**Deadlines** (bench seconds): ``tight`` = 4 s (12 min), ``hour`` = 20 s, ``day`` = 480 s (the Batch window).

**Strategies**, each against its own fresh simulator, run side by side:

* ``router``: ``ratepilot run --tier auto --deadline D`` (``--mode auto``: the Batch API for a day), once per
  deadline;
* ``all_standard``: ``--tier standard``;
* ``all_flex``: ``--tier flex``, flex's unavailability waited out however long it lasts (the Pilot backs off);
* ``batch``: ``--mode batch`` (polled every 0.5 s).

The runs judged against a close deadline (``all_standard``, the router's ``tight`` and ``hour``) run one after
another; the long ones run beside them.

The online and batch strategies do not depend on the deadline: each runs once and is judged against each one.
``cost_usd`` is what the simulator billed (flex and batch at half price); ``finish_s`` the wall time of the run.

The last line of output is one JSON object: ``{"deadlines": {name: {strategy: {"cost_usd", "finish_s",
"deadline_met"}}}, "router_always_met": bool, "router_cheapest_that_met": bool, ...}``. "Cheapest" allows 2%:
with a deadline set, the router sends its first request at the standard price to learn the pace.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ratepilot.client import Pilot
from ratepilot.retry import RetryPolicy
from ratepilot.run import RunOptions, run_job
from ratepilot.run.mode import BATCH_WINDOW_S
from ratepilot.sim import SimConfig, Simulator
from ratepilot.sim.longrun import LongrunConfig, configure

SCALE = 180.0
DEADLINES = {"tight": 4.0, "hour": 3600 / SCALE, "day": BATCH_WINDOW_S / SCALE}
FLEX_BUSY = ((1.5, 19.0),)
KEY = "bench-tiers-key"
TOLERANCE = 1.02


def _world() -> SimConfig:
    # The realistic preset: per-second windows, refusals charged, headers and retry-after sometimes missing, a ramp
    # limit; the router must meet its deadlines there, not only in the friendly world.
    return SimConfig.realistic(
        rpm=2_400,
        tpm=10_000_000,
        quantum_s=1.0,
        latency_ms=20,
        responder="fixed",
        flex_busy=FLEX_BUSY,
        flex_unavailable_p=0.02,
        flex_latency_ms=60_000 / SCALE,
        seed=7,
    )


def _requests(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"classify item {i}"}]}
            fh.write(json.dumps({**body, "max_tokens": 5}) + "\n")
    return path


def run_strategy(strategy: str, deadline: float | None, n: int, work: Path) -> dict[str, Any]:
    """One strategy against its own simulator: cost billed, wall time, lanes."""
    with Simulator(_world()) as sim:
        # The job's batch takes 1.5 real hours (45 s here): well inside its window, beyond an hour.
        configure(sim.state, LongrunConfig(time_scale=SCALE, batch_lines_per_second=n / 5400, seed=3))
        tag = f"{strategy}-{deadline}"
        options = RunOptions(
            _requests(work / f"{tag}.jsonl", n),
            work / f"{tag}-results.jsonl",
            base_url=sim.base_url,
            api_key=KEY,
            cache=False,
            state_dir=work / f"{tag}-state",
            batch_poll_interval_s=0.5,
            batch_window_s=BATCH_WINDOW_S / SCALE,
            flex_answer_s=60 / SCALE,
        )
        unavailable = 300.0
        if strategy == "router":
            options.tier, options.mode, options.deadline_s = "auto", "auto", deadline
            unavailable = 0.0  # the router waits out flex itself (as ratepilot run sets it)
        elif strategy == "all_standard":
            options.tier = "standard"
        elif strategy == "all_flex":
            options.tier = "flex"
            unavailable = 3_600.0  # however long the outage lasts
        else:
            options.mode = "batch"
        started = time.monotonic()
        with Pilot(retry=RetryPolicy(unavailable_patience=unavailable)) as pilot:
            summary = run_job(options, pilot=pilot)
        finish = time.monotonic() - started
        stats = sim.stats()
    return {
        "cost_usd": round(sum(u["cost_usd"] for u in stats["usage"].values()), 6),
        "finish_s": round(finish, 2),
        "answered": summary.done,
        "mode": summary.mode,
        "lanes": summary.lanes,
        "exit_code": int(summary.exit_code),
        "flex_unavailable": stats.get("tiers", {}).get("flex_unavailable", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 requests (~35 s)")
    args = parser.parse_args()
    n = 100 if args.quick else 300
    # The runs whose deadline is close are timed alone, one after another; the long ones (an outage to wait
    # out, a batch) run beside them: 2 cores, and a run's first seconds decide whether it meets the deadline.
    slow = [("all_flex", None, None), ("batch", None, None), ("router", "day", DEADLINES["day"])]
    timed = [
        ("all_standard", None, None),
        ("router", "tight", DEADLINES["tight"]),
        ("router", "hour", DEADLINES["hour"]),
    ]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(slow)) as pool:
        futures = {(s, name): pool.submit(run_strategy, s, d, n, Path(tmp)) for s, name, d in slow}
        results = {(s, name): run_strategy(s, d, n, Path(tmp)) for s, name, d in timed}
        results.update({key: f.result() for key, f in futures.items()})

    table: dict[str, dict[str, dict[str, Any]]] = {}
    always_met = cheapest = True
    for name, deadline in DEADLINES.items():
        row: dict[str, dict[str, Any]] = {}
        for strategy in ("router", "all_standard", "all_flex", "batch"):
            r = results[(strategy, name if strategy == "router" else None)]
            met = r["answered"] == n and r["finish_s"] <= deadline
            row[strategy] = {**r, "deadline_met": met}
        table[name] = row
        print(
            f"{name:>6} ({deadline:g} s): "
            + "  ".join(
                f"{s} ${v['cost_usd']:.5f} {v['finish_s']:.1f}s {'met' if v['deadline_met'] else 'MISSED'}"
                for s, v in row.items()
            )
        )
        always_met &= row["router"]["deadline_met"]
        met_costs = [v["cost_usd"] for s, v in row.items() if v["deadline_met"] and s != "router"]
        if met_costs and row["router"]["cost_usd"] > min(met_costs) * TOLERANCE:
            cheapest = False
    print(
        json.dumps(
            {
                "deadlines": table,
                "router_always_met": always_met,
                "router_cheapest_that_met": cheapest,
                "requests": n,
                "scale": SCALE,
                "flex_busy_s": FLEX_BUSY,
            }
        )
    )


if __name__ == "__main__":
    main()
