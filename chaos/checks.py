"""The verdict on every run once the load is over; each broken guarantee is a ``Violation``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from chaos.load import PlannedRun
from chaos.suspensions import suspension_violations
from mpstate import PipelineRun, PipelineRunStatus, RunFailed, StepGated, audit_run
from mpstate.graph import dependencies
from mpstate.store import PipelineStateStore

__all__ = ["PERMANENT_FAILURES", "RunVerdicts", "Violation", "check_runs"]

#: The only reasons a run may fail here: its gate rejected it, or a step ran out of retries
#: (the provider kept failing, or its worker was lost again and again). A transient outage is
#: never a reason.
PERMANENT_FAILURES = frozenset({"gate-rejected", "RENDER_FARM_BUSY", "worker-lost"})


@dataclass(frozen=True)
class Violation:
    run_id: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"run {self.run_id}: [{self.rule}] {self.detail}"


@dataclass
class RunVerdicts:
    """What the runs ended as, and every violation found."""

    statuses: Counter[str]
    failure_codes: Counter[str]
    violations: list[Violation]
    callbacks_applied: int
    cache_hits: int
    retried_steps: int
    reconciler_requeues: int
    total_cost_usd: float
    #: Runs in which two steps executed at once (the graph's branches ran in parallel).
    parallel_runs: int = 0
    #: Provider answers applied by a poll rather than a callback.
    polled_results: int = 0
    #: What the budgets and gates did: holds, releases, refused resumes, verdicts by kind.
    suspensions: Counter[str] = field(default_factory=Counter)


def check_runs(
    store: PipelineStateStore, planned: list[PlannedRun], *, bound_s: float
) -> RunVerdicts:
    """Check each planned run, then the tenants' views of them."""
    violations: list[Violation] = []
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    applied = cache_hits = retried = requeued = parallel = polled = 0
    suspensions: Counter[str] = Counter()
    total_cost = 0.0
    for plan in planned:
        if plan.run_id is None:
            violations.append(Violation(f"#{plan.index}", "lost", "the run was never started"))
            continue
        run = store.get(plan.run_id)
        if run is None:
            violations.append(Violation(plan.run_id, "lost", "the run is not in the store"))
            continue
        statuses[run.status.value] += 1
        violations.extend(_run_violations(run, plan, bound_s))
        for event in run.events:
            meta = event.meta or {}
            answered = "jobId" in meta and event.kind in ("step-completed", "step-failed")
            polled += answered and meta.get("via") == "poll"
            applied += answered and meta.get("via") != "poll"
            cache_hits += event.kind == "step-cached"
            retried += event.kind == "step-failed" and bool(getattr(event, "retryable", False))
            requeued += getattr(event, "code", None) == "worker-lost"
            if event.kind == "run-failed":
                codes[getattr(event, "code", "?")] += 1
        total_cost += run.cost_usd
        parallel += branches_overlapped(run)
        suspensions.update(_suspension_counts(run, plan))
    violations.extend(_tenancy_violations(store, planned))
    return RunVerdicts(
        statuses,
        codes,
        violations,
        applied,
        cache_hits,
        retried,
        requeued,
        round(total_cost, 6),
        parallel,
        polled,
        suspensions,
    )


def _suspension_counts(run: PipelineRun, plan: PlannedRun) -> Counter[str]:
    counts: Counter[str] = Counter()
    for event in run.events:
        if isinstance(event, StepGated) and event.gate_type == "budget":
            counts[f"budget {event.verdict}"] += 1
        elif isinstance(event, StepGated) and event.verdict in ("approved", "rejected"):
            how = "timed out" if (event.meta or {}).get("timedOut") else "by the operator"
            counts[f"gate {event.verdict} {how}"] += 1
    if plan.suspension is not None and plan.suspension.budget_refused:
        counts["budget resume refused (not raised)"] += 1
    return counts


def _graph_violations(run: PipelineRun) -> list[Violation]:
    """A step that started before every step it depends on had completed: the graph's order
    broken (the log is in commit order, so this reads it as it happened)."""
    found = []
    done: set[str] = set()
    needs = dependencies(run.steps)
    for event in run.events:
        step_id = getattr(event, "step_id", None)
        if event.kind in ("step-completed", "step-cached") and step_id is not None:
            done.add(step_id)
        elif event.kind == "step-started" and step_id is not None:
            early = [need for need in needs.get(step_id, ()) if need not in done]
            if early:
                found.append(
                    Violation(run.run_id, "graph", f"{step_id} started before {early} completed")
                )
    return found


def branches_overlapped(run: PipelineRun) -> bool:
    """Whether two steps of the run were executing at once (its branches ran in parallel)."""
    executing: set[str] = set()
    for event in run.events:
        step_id = getattr(event, "step_id", None)
        if step_id is None:
            continue
        if event.kind == "step-started":
            executing.add(step_id)
            if len(executing) > 1:
                return True
        elif event.kind in ("step-completed", "step-cached", "step-waiting") or (
            event.kind == "step-failed" and not getattr(event, "retryable", False)
        ):
            executing.discard(step_id)
    return False


def _run_violations(run: PipelineRun, plan: PlannedRun, bound_s: float) -> list[Violation]:
    found = [Violation(run.run_id, f"audit:{f.rule}", f.detail) for f in audit_run(run)]
    found.extend(_graph_violations(run))
    if not run.is_terminal:
        step = run.steps[min(run.current_step_index, len(run.steps) - 1)]
        found.append(
            Violation(
                run.run_id,
                "not-terminal",
                f"{run.status} after {bound_s:.0f} s (step {step.step_id} {step.status})",
            )
        )
        return found
    if run.completed_at is not None and run.completed_at - run.created_at > timedelta(
        seconds=bound_s
    ):
        found.append(Violation(run.run_id, "too-slow", f"ended after {bound_s:.0f} s"))
    if run.status in (PipelineRunStatus.FAILED, PipelineRunStatus.CANCELLED) and not run.error:
        found.append(Violation(run.run_id, "no-reason", f"{run.status} without a reason"))
    if run.status is PipelineRunStatus.CANCELLED and not plan.cancelled:
        found.append(Violation(run.run_id, "cancelled", "cancelled, but nobody cancelled it"))
    if plan.cancelled and run.status is not PipelineRunStatus.CANCELLED:
        found.append(
            Violation(run.run_id, "cancelled", f"cancel succeeded but run is {run.status}")
        )
    failure = next((e for e in run.events if isinstance(e, RunFailed)), None)
    if failure is not None and failure.code not in PERMANENT_FAILURES:
        found.append(
            Violation(run.run_id, "failure", f"failed for a passing reason: {failure.code}")
        )
    if plan.doomed and run.status is PipelineRunStatus.COMPLETED:
        found.append(Violation(run.run_id, "gate", "its quality gate rejects, yet it completed"))
    if plan.other_run_ids:
        found.append(
            Violation(run.run_id, "idempotency", f"a second submit created {plan.other_run_ids}")
        )
    found.extend(
        Violation(run.run_id, rule, detail) for rule, detail in suspension_violations(run, plan)
    )
    if run.tenant_id != plan.tenant_id:
        found.append(Violation(run.run_id, "tenant", f"stored for tenant {run.tenant_id}"))
    return found


def _tenancy_violations(store: PipelineStateStore, planned: list[PlannedRun]) -> list[Violation]:
    """Each tenant lists exactly its own runs, and sees no other tenant's run."""
    found = []
    tenants = sorted({plan.tenant_id for plan in planned})
    for tenant in tenants:
        expected = {p.run_id for p in planned if p.tenant_id == tenant and p.run_id}
        scoped = store.for_tenant(tenant)
        listed = {run.run_id for run in scoped.list_runs(limit=10_000)}
        if listed != expected:
            missing, extra = expected - listed, listed - expected
            found.append(
                Violation(f"tenant {tenant}", "tenancy", f"missing {missing}, foreign {extra}")
            )
        foreign = next((p for p in planned if p.tenant_id != tenant and p.run_id), None)
        if foreign is not None and foreign.run_id and scoped.get(foreign.run_id) is not None:
            found.append(Violation(foreign.run_id, "tenancy", f"visible to tenant {tenant}"))
    return found
