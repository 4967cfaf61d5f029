"""Draw docs/figures/learned-burst.png: requests per second over time, before and after the first refusals.

    .venv/bin/pip install 'ratepilot[docs]'   # matplotlib
    .venv/bin/python docs/figures/learned_burst.py

The run is the deterministic one of ``tests/limits/test_burst.py`` (a fake clock, the simulator's enforcement
model as the server, 50 ms round trips): an RPM-bound job at 300 RPM against a server that enforces the limit
per second (``quantum_s=1``), and the same job against minute-only enforcement, where slow start grows the
burst to the whole minute and nothing is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "limits"))
from test_burst import drive  # noqa: E402  (the test's driver: one model of the run, not two)

OUT = Path(__file__).with_name("learned-burst.png")


def per_second(times: list[float], until: float) -> tuple[list[float], list[int]]:
    bins = [0] * (int(until) + 1)
    for t in times:
        if t < until:
            bins[int(t)] += 1
    return [float(i) for i in range(len(bins))], bins


def main() -> None:
    quantized = drive("memory://", rpm=300, tpm=50_000_000, cost=10, actual=8, n=450, quantum_s=1.0)
    minute = drive("memory://", rpm=300, tpm=50_000_000, cost=10, actual=8, n=600)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    axes[1].set_ylim(1, 400)
    for ax, run, title, scale in (
        (axes[0], quantized, "server enforces 300 RPM as 5 per second (quantum_s=1)", "linear"),
        (axes[1], minute, "server enforces the minute only: the first minute's 300 go out in ~4 s", "log"),
    ):
        xs, ys = per_second(run.admitted, 30.0)
        ax.bar(xs, ys, width=0.9, align="edge", color="#4c72b0", label="admitted per second")
        rx, ry = per_second(run.refusals, 30.0)
        ax.bar(rx, ry, width=0.9, align="edge", color="#c44e52", label="429 per second")
        ax.axhline(5, color="#55a868", linestyle="--", label="sustained limit (5/s)")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("requests / s")
        ax.set_yscale(scale)
        ax.legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel("seconds since the job started")
    fig.suptitle("The learned burst: slow start, one cut, then smooth pacing", fontsize=11)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
