"""Benchmark of the dashboard's pages: latency and store round trips at 1,000 and 100,000 runs.

Run ``python -m benchmarks.dashboard [--quick]`` (``make bench`` runs it too). It starts a private
redis-server on a free loopback port (never the machine's own Redis), bulk-loads two tenants of
1,000 and 100,000 runs (``benchmarks.workload``), serves ``dashboard_app`` with uvicorn on
loopback and fetches pages over real HTTP. Each round alternates a page with the baseline, the
dashboard's ``/healthz`` (the same server, framework and connection, no store and no template),
so both see the same machine load; the report gives medians and the ratio page / baseline.
Round trips are counted on the store (one per request its plans send) and must not grow with the
number of runs. Results go to ``benchmarks/results/dashboard.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.harness import write_results
from benchmarks.workload import bulk_create, bulk_run_id
from celery_app.embedded import bind_loopback, serving, url_of
from mpstate.dashboard import dashboard_app
from mpstate.plans import Plan, drive
from mpstate.redis import RedisPipelineStateStore
from mpstate.testing import RedisServer

PREFIX = "bench-dashboard"
TENANTS = {"small": 1_000, "large": 100_000}


class CountingStore(RedisPipelineStateStore):
    """Counts the requests its plans send (each is one round trip)."""

    requests = 0

    def _drive(self, plan: Plan[Any]) -> Any:
        return drive(plan, self._count)

    def _count(self, request: Any) -> Any:
        type(self).requests += 1
        return self._executor(request)


def timed(http: httpx.Client, url: str) -> float:
    started = time.perf_counter()
    response = http.get(url)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"GET {url}: {response.status_code}")
    return elapsed


def measure(http: httpx.Client, base: str, path: str, rounds: int) -> dict[str, float | int]:
    """Median latency of ``path`` and of the baseline, alternating; the store round trips of one
    request of ``path``."""
    page, baseline = [], []
    for _ in range(rounds):
        page.append(timed(http, base + path))
        baseline.append(timed(http, base + "/healthz"))
    before = CountingStore.requests
    timed(http, base + path)
    page_ms = statistics.median(page) * 1000
    baseline_ms = statistics.median(baseline) * 1000
    return {
        "medianMs": round(page_ms, 2),
        "baselineMs": round(baseline_ms, 2),
        "ratio": round(page_ms / baseline_ms, 1),
        "roundTrips": CountingStore.requests - before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 runs, fewer rounds")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/dashboard.json"))
    args = parser.parse_args(argv)
    sizes = {"small": 1_000, "large": 10_000} if args.quick else TENANTS
    rounds = 9 if args.quick else 25
    started = time.perf_counter()
    with RedisServer() as server:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        for tenant, count in sizes.items():
            print(f"loading {count:,} runs of tenant {tenant}", file=sys.stderr)
            bulk_create(client, PREFIX, tenant, count)
        store = CountingStore(redis.Redis(host="127.0.0.1", port=server.port), prefix=PREFIX)
        sock = bind_loopback()
        results: dict[str, Any] = {}
        with serving(dashboard_app(store), sock), httpx.Client(timeout=30) as http:
            base = url_of(sock)
            pages: dict[str, Callable[[str, int], str]] = {
                "list": lambda tenant, _: f"/?tenant={tenant}",
                "list, page 10": lambda tenant, _: f"/?tenant={tenant}&offset=450",
                "list, one status": lambda tenant, _: f"/?tenant={tenant}&status=pending",
                "run": lambda tenant, count: f"/runs/{bulk_run_id(tenant, count // 2)}",
            }
            for name, path_of in pages.items():
                for tenant, count in sizes.items():
                    figure = measure(http, base, path_of(tenant, count), rounds)
                    results[f"{name} @ {count:,} runs"] = figure
                    print(f"{name:>18} @ {count:>7,} runs: {figure}")
        client.close()
    flat = all(
        results[f"{name} @ {sizes['small']:,} runs"]["roundTrips"]
        == results[f"{name} @ {sizes['large']:,} runs"]["roundTrips"]
        for name in pages
    )
    print(f"round trips independent of the number of runs: {'PASS' if flat else 'MISS'}")
    write_results(args.output, {"pages": results, "roundTripsFlat": flat}, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
