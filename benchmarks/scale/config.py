"""Settings shared by every part of the scale benchmark: sizes, names and the run modes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results" / "scale.json"
#: Where ``--spread`` (each cluster primary's share of server CPU) writes its results.
SPREAD_RESULTS = RESULTS.with_name("scale-spread.json")
PREFIX = "mp"
SMALL_TENANT = "tenant-1k"
BENCH_TENANT = "tenant-bench"
PAGE_SIZE = 50
#: A page of an index of a million runs may take at most this many times a 1,000-run page.
PAGE_FLAT_TARGET = 1.5
#: Runs each update worker cycles over (so a commit is not always to the same run).
RUNS_PER_UPDATER = 8
#: How long the store keeps a write's outcome for retries (``_OPERATION_TTL_MS``), in seconds.
OP_KEY_TTL_SECONDS = 600
#: ``stream-node-max-bytes`` tried on a copy of a run's stream (the default is 4096).
STREAM_NODE_PROBE_BYTES = 1024
OPS = ("create", "commit_status", "commit")
OP_LABELS = {
    "create": "create",
    "commit_status": "commit, versioned, status change + 1 event",
    "commit": "commit, versioned, no status change, 1 event",
    "baseline": "raw round trip (EVALSHA 'return 1')",
}
APIS = ("threads", "asyncio")


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    runs: int
    tenants: int
    small_tenant_runs: int
    loaders: int
    idempotent_every: int
    completed_every: int
    rounds: int
    baseline_seconds: float
    op_seconds: float
    concurrency: tuple[int, ...]
    list_samples: int
    memory_samples: int
    progress_seconds: float

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls(
                "quick", 20_000, 100, 1_000, 4, 10, 4, 2, 0.25, 0.4, (1, 8, 32), 40, 300, 5.0
            )
        return cls(
            "full", 1_000_000, 100, 1_000, 4, 10, 4, 5, 0.5, 1.0, (1, 8, 32), 300, 2_000, 30.0
        )


def tenant_name(index: int) -> str:
    return f"tenant-{index:03d}"


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)
