"""``list_runs`` page latency: first pages and deep offsets, on small and large indexes."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import percentile
from benchmarks.scale.config import PAGE_SIZE, SMALL_TENANT, Config, tenant_name
from benchmarks.scale.loading import Target
from mpstate.models import PipelineRun


@dataclass(frozen=True, slots=True)
class ListCase:
    name: str
    label: str
    index_runs: int
    filters: dict[str, Any]


def list_cases(config: Config, runs_total: int, *, before_load: bool = False) -> list[ListCase]:
    small = config.small_tenant_runs
    if before_load:
        return [
            ListCase("global_first", "global, first page", small, {}),
            ListCase(
                "global_deep", f"global, offset {small // 2:,}", small, {"offset": small // 2}
            ),
        ]
    per_tenant = len(range(0, config.runs, config.tenants))
    return [
        ListCase("small_first", f"tenant of {small:,}, first page", small,
                 {"tenant_id": SMALL_TENANT}),
        ListCase("small_deep", f"tenant of {small:,}, offset {small // 2:,}", small,
                 {"tenant_id": SMALL_TENANT, "offset": small // 2}),
        ListCase("tenant_first", f"tenant of {per_tenant:,}, first page", per_tenant,
                 {"tenant_id": tenant_name(0)}),
        ListCase("tenant_deep", f"tenant of {per_tenant:,}, offset {per_tenant // 2:,}",
                 per_tenant, {"tenant_id": tenant_name(0), "offset": per_tenant // 2}),
        ListCase("global_first", f"global ({runs_total:,}), first page", runs_total, {}),
        ListCase("global_deep", f"global ({runs_total:,}), offset {runs_total // 2:,}",
                 runs_total, {"offset": runs_total // 2}),
    ]  # fmt: skip


def measure_list_runs(
    target: Target, cases: list[ListCase], samples: int
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Median and p95 latency of each page, the cases taken in a fresh random order each time."""
    store = target.sync_store()
    problems: list[str] = []
    timings: dict[str, list[float]] = {case.name: [] for case in cases}
    try:
        for case in cases:
            page = store.list_runs(limit=PAGE_SIZE, **case.filters)
            problem = _check_page(page, case)
            if problem:
                problems.append(f"{target.name}: list_runs {case.label}: {problem}")
        order = list(cases)
        for _ in range(samples):
            random.shuffle(order)
            for case in order:
                started = time.perf_counter()
                store.list_runs(limit=PAGE_SIZE, **case.filters)
                timings[case.name].append(time.perf_counter() - started)
    finally:
        store.close()
    results = {}
    for case in cases:
        values = timings[case.name]
        results[case.name] = {
            "label": case.label,
            "index_runs": case.index_runs,
            "p50_ms": round(statistics.median(values) * 1000, 3),
            "p95_ms": round(percentile(values, 0.95) * 1000, 3),
            "samples": len(values),
        }
    return results, problems


def _check_page(page: list[PipelineRun], case: ListCase) -> str | None:
    expected = max(0, min(PAGE_SIZE, case.index_runs - case.filters.get("offset", 0)))
    if len(page) != expected:
        return f"{len(page)} runs, not {expected}"
    tenant = case.filters.get("tenant_id")
    if tenant is not None and any(run.tenant_id != tenant for run in page):
        return "runs of another tenant"
    order = [(run.created_at, run.run_id) for run in page]
    if order != sorted(order):
        return "not in created_at order"
    return None
