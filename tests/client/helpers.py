"""Small readers of the simulator's stats."""

from __future__ import annotations

from ratepilot.sim import Simulator


def total_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"]["total"])


def sim_429s(sim: Simulator) -> int:
    return int(sim.stats()["rate_limited"]["total"])


def billed_usd(sim: Simulator) -> float:
    return float(sum(u["cost_usd"] for u in sim.stats()["usage"].values()))
