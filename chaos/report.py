"""The summary of one chaos run: a table for people, the same figures as JSON for machines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["Summary"]


@dataclass
class Summary:
    """Every figure the chaos run reports; ``passed`` only with no violation at all."""

    config: dict[str, Any]
    elapsed_s: float = 0.0
    runs: int = 0
    max_in_flight: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failure_codes: dict[str, int] = field(default_factory=dict)
    cancels_too_late: int = 0
    child_kills: int = 0
    worker_kills: int = 0
    redis_restarts: int = 0
    reconciler: dict[str, int] = field(default_factory=dict)
    worker_lost_steps: int = 0
    retried_steps: int = 0
    cache_hits: int = 0
    parallel_runs: int = 0
    polled_results: int = 0
    suspensions: dict[str, int] = field(default_factory=dict)
    provider: dict[str, int] = field(default_factory=dict)
    callbacks_applied: int = 0
    duplicate_callbacks_absorbed: int = 0
    receiver_probes: int = 0
    store_probes: int = 0
    bad_inputs_refused: int = 0
    canaries_unchanged: bool = False
    canaries_completed: bool = False
    total_cost_usd: float = 0.0
    violations: list[str] = field(default_factory=list)
    #: Each run a violation names, as the store holds it at the end (its steps and its whole
    #: event log), so a failure seen once can be read after the deployment is gone.
    violating_runs: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        document = dict(self.__dict__)
        document["passed"] = self.passed
        return document

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n")

    def table(self) -> Table:
        table = Table("", "", title="mpstate chaos", show_header=False)
        statuses = self.statuses
        rows = [
            ("runs (max in flight)", f"{self.runs} ({self.max_in_flight})"),
            (
                "completed / failed / cancelled",
                f"{statuses.get('completed', 0)} / {statuses.get('failed', 0)} / "
                f"{statuses.get('cancelled', 0)}",
            ),
            ("failures by code", _counts(self.failure_codes) or "-"),
            ("cancels after the run ended", str(self.cancels_too_late)),
            (
                "worker kills (child / whole worker)",
                f"{self.child_kills + self.worker_kills} "
                f"({self.child_kills} / {self.worker_kills})",
            ),
            ("Redis restarts (SIGKILL, AOF)", str(self.redis_restarts)),
            ("reconciler requeued / failed / skipped", _slashed(self.reconciler)),
            ("step retries (retryable step-failed)", str(self.retried_steps)),
            ("cache hits (step-cached)", str(self.cache_hits)),
            ("runs whose branches ran in parallel", str(self.parallel_runs)),
            ("budgets and gates", _counts(self.suspensions) or "-"),
            (
                "callbacks delivered (duplicates, late, early)",
                f"{self.provider.get('callbacks_sent', 0)} ("
                f"{self.provider.get('duplicates_sent', 0)}, "
                f"{self.provider.get('late_duplicates_sent', 0)}, "
                f"{self.provider.get('early_sent', 0)})",
            ),
            (
                "jobs that never called back / polls answered / results found by a poll",
                f"{self.provider.get('silent_jobs', 0)} / {self.provider.get('polls', 0)} / "
                f"{self.polled_results}",
            ),
            (
                "callbacks applied / absorbed",
                f"{self.callbacks_applied} / {self.duplicate_callbacks_absorbed}",
            ),
            (
                "bad inputs refused (receiver + store)",
                f"{self.bad_inputs_refused} / {self.receiver_probes + self.store_probes}",
            ),
            (
                "canaries unchanged, then completed",
                f"{self.canaries_unchanged}, {self.canaries_completed}",
            ),
            ("total cost", f"${self.total_cost_usd:.2f}"),
            ("violations", str(len(self.violations))),
            ("elapsed", f"{self.elapsed_s:.0f} s"),
        ]
        for label, value in rows:
            table.add_row(label, value)
        return table

    def print(self, console: Console) -> None:
        console.print(self.table())
        for violation in self.violations[:50]:
            console.print(f"[red]violation[/red] {escape(violation)}")
        if len(self.violations) > 50:
            console.print(f"... and {len(self.violations) - 50} more (see the JSON)")
        if self.violating_runs:
            console.print(
                f"the {len(self.violating_runs)} runs they name, with their event logs:"
                " violating_runs in the JSON"
            )
        console.print("[green]PASSED[/green]" if self.passed else "[red]FAILED[/red]")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _slashed(counts: dict[str, int]) -> str:
    return " / ".join(str(counts.get(k, 0)) for k in ("requeued", "failed", "skipped"))
