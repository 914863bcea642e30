"""Audits: does a stored run agree with its own event log?

``audit_run(run)`` (a run read with ``store.get``, events included) returns every finding, an
empty list for a sound run. It checks the log's shape, that costs add up, and that the stored
state equals the state ``replay_run`` rebuilds from the log. Use it after an incident, in a
periodic job, or before repairing a run by hand; the chaos suite runs it on every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpstate.events import TERMINAL_EVENT_KINDS, PipelineEvent, RunCompleted
from mpstate.models import PipelineRun
from mpstate.replay import log_state, replay_run

__all__ = ["AuditFinding", "audit_run", "log_findings", "state_differences"]

_COMPLETIONS = frozenset({"step-completed", "step-cached"})
_STEP_KINDS = frozenset(
    {
        "step-started",
        "step-progress",
        "step-cached",
        "step-completed",
        "step-failed",
        "step-gated",
        "step-waiting",
    }
)
_COST_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One thing wrong with a run: which rule it breaks, and how."""

    run_id: str
    #: A stable name for the rule: ``seq``, ``first-event``, ``terminal``, ``completion``,
    #: ``unknown-step``, ``foreign-event``, ``cost`` or ``state``.
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"run {self.run_id}: [{self.rule}] {self.detail}"


def audit_run(
    run: PipelineRun, events: Sequence[PipelineEvent] | None = None
) -> list[AuditFinding]:
    """Every finding for ``run`` and its log (``run.events`` unless ``events`` is given)."""
    log = list(run.events if events is None else events)
    findings = log_findings(run, log)
    findings.extend(
        AuditFinding(run.run_id, "state", difference)
        for difference in state_differences(run, replay_run(run, log))
    )
    return findings


def log_findings(run: PipelineRun, events: Sequence[PipelineEvent]) -> list[AuditFinding]:
    """What is wrong with the log itself and with the run's costs."""
    found: list[tuple[str, str]] = []
    seqs = [event.seq for event in events]
    if seqs != list(range(1, len(events) + 1)):
        found.append(("seq", f"seqs are not 1..{len(events)} in order: {_abbreviated(seqs)}"))
    if not events or events[0].kind != "run-created":
        found.append(("first-event", "the log does not start with run-created"))
    found.extend(_terminal_findings(run, events))
    step_ids = {step.step_id for step in run.steps}
    completions: Counter[str] = Counter()
    for event in events:
        if event.run_id != run.run_id:
            found.append(("foreign-event", f"seq {event.seq} belongs to run {event.run_id}"))
        step_id = getattr(event, "step_id", None)
        if event.kind in _STEP_KINDS and step_id not in step_ids:
            found.append(("unknown-step", f"seq {event.seq} ({event.kind}) names {step_id!r}"))
        if event.kind in _COMPLETIONS and step_id is not None:
            completions[step_id] += 1
    found.extend(
        ("completion", f"step {step_id!r} completed {count} times")
        for step_id, count in sorted(completions.items())
        if count > 1
    )
    found.extend(_cost_findings(run, events))
    return [AuditFinding(run.run_id, rule, detail) for rule, detail in found]


def _terminal_findings(run: PipelineRun, events: Sequence[PipelineEvent]) -> list[tuple[str, str]]:
    terminal = [event for event in events if event.kind in TERMINAL_EVENT_KINDS]
    if len(terminal) > 1:
        return [("terminal", f"{len(terminal)} terminal events: seqs {[e.seq for e in terminal]}")]
    if terminal and terminal[0] is not events[-1]:
        return [("terminal", f"events follow the terminal {terminal[0].kind}")]
    if run.is_terminal and not terminal:
        return [("terminal", f"the run is {run.status} but its log has no terminal event")]
    if terminal and not run.is_terminal:
        return [("terminal", f"the log ended with {terminal[0].kind} but the run is {run.status}")]
    return []


def _cost_findings(run: PipelineRun, events: Sequence[PipelineEvent]) -> list[tuple[str, str]]:
    found = []
    steps_total = sum(step.cost_usd for step in run.steps)
    if abs(steps_total - run.cost_usd) > _COST_TOLERANCE:
        found.append(("cost", f"run cost {run.cost_usd} != sum of step costs {steps_total}"))
    logged = sum(getattr(event, "cost_usd", 0.0) for event in events if event.kind in _COMPLETIONS)
    for event in events:
        if isinstance(event, RunCompleted) and abs(event.total_cost_usd - logged) > _COST_TOLERANCE:
            found.append(
                ("cost", f"run-completed totals {event.total_cost_usd}, steps logged {logged}")
            )
    return found


def state_differences(stored: PipelineRun, replayed: PipelineRun) -> list[str]:
    """Each log-determined field where ``stored`` and ``replayed`` differ, as ``path: a != b``."""
    return _differences(log_state(stored), log_state(replayed), "")


def _differences(stored: Any, replayed: Any, path: str) -> list[str]:
    if isinstance(stored, dict) and isinstance(replayed, dict):
        found = []
        for key in sorted(stored.keys() | replayed.keys()):
            found.extend(
                _differences(stored.get(key), replayed.get(key), f"{path}.{key}" if path else key)
            )
        return found
    if stored != replayed:
        return [f"{path}: stored {stored!r} != replayed {replayed!r}"]
    return []


def _abbreviated(values: Sequence[Any], keep: int = 12) -> str:
    shown = ", ".join(map(str, values[:keep]))
    return f"[{shown}{', ...' if len(values) > keep else ''}]"
