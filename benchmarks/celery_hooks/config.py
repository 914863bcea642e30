"""Settings shared by every part of the Celery hooks benchmark: names, goals and run modes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results" / "celery_hooks.json"
STORE_PREFIX = "mpbench"
NOOP = "bench.noop"
STEP = "bench.step"
FLOOR = "bench.floor"
GATE = "bench.gate"
PIPELINE = "bench-noop"
#: The kinds measured in every round, in the first round's order (it rotates between rounds).
KINDS = ("bare", "chain", "floor", "hooks")
#: The floor's one durable write per round trip: a step's state in a hash and an event in a
#: stream, the least a start or a completion must make durable.
FLOOR_WRITE = """redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])"""

#: Goals (issue 17), reported as PASS/MISS. hooks over the bare Celery chain, end to end (from
#: the first publish to the last task's completion), median of the per-round ratios:
CHAIN_RATIO_GOAL = 0.8
#: The store's redis-server main-thread CPU per step (hooks minus chain), microseconds.
STORE_SERVER_US_GOAL = 250.0
#: The store's Redis commands per step (hooks minus chain), commands run inside scripts included.
STORE_COMMANDS_GOAL = 15.0
#: Informational: the store round trips per step cannot go below one to start a step and one to
#: complete it.
STORE_ROUND_TRIPS_FLOOR = 2.0
#: How long the gate task waits to be released, and the slowest drain rate waited for.
GATE_TIMEOUT_S = 120.0
MIN_DRAIN_RATE = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    rounds: int
    #: Alternations of the kinds' backlogs per round (each kind's round total is their sum).
    chunks: int
    #: Runs (or chains) per hooks (or chain) backlog; a bare backlog has ``runs * steps`` tasks.
    runs: int
    steps: int
    warmup_runs: int
    breakdown_runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls("quick", 2, 2, 15, 3, 10, 20)
        return cls("full", 7, 3, 130, 3, 60, 200)
