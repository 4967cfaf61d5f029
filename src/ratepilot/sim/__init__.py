"""The rate-limit simulator: a local, OpenAI-compatible server that enforces limits like the real one.

from ratepilot.sim import Simulator, SimConfig

with Simulator(SimConfig(rpm=60, tpm=10_000)) as sim:
    client = OpenAI(base_url=sim.base_url, api_key="sk-test-anything", max_retries=0)
"""

from __future__ import annotations

from .app import create_app
from .config import ConfigError, FaultConfig, KeySpec, Limits, ModelSpec, PoolSpec, SimConfig
from .enforcement import ideal_admissions
from .server import Simulator, serve
from .state import SimState

__all__ = [
    "ConfigError",
    "FaultConfig",
    "KeySpec",
    "Limits",
    "ModelSpec",
    "PoolSpec",
    "SimConfig",
    "SimState",
    "Simulator",
    "create_app",
    "ideal_admissions",
    "serve",
]
