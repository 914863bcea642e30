"""A run's budget: what it has spent and reserved, and whether a step may start within it.

``start_run(..., budget={"maxUsd": 5.0})``: ``maxUsd`` is the key mpstate enforces (a
non-negative number of US dollars); any other key is the caller's, stored and never read.

What a run counts against ``maxUsd``:

- the cost of every step done (``PipelineRun.cost_usd``), and
- for every step in flight (running, queued, waiting for a provider or for a verdict), the most
  of: the cost it reported so far (``costUsdAccrued`` of its step-progress), its estimate
  (``estimatedCostUsd``), and the cost of a result that waits for approval.

A step may start while what the *other* steps count is below ``maxUsd`` and adding its own
estimate does not cross it. The transitions decide this on the run as committed
(``mpstate.celery.transitions``), and the decision is part of the same versioned commit as the
start, so two branches racing for the last dollar are decided one after the other. A step
already running is never stopped: if it reports more than the budget allows, the steps after it
wait (they are *held*).

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpstate.errors import InvalidInputError
from mpstate.graph import active_steps
from mpstate.models import StepState, StepStatus

__all__ = ["MAX_USD", "Admission", "admit", "check_budget", "max_usd", "step_reservation"]

#: The budget key mpstate enforces.
MAX_USD = "maxUsd"

#: Costs are compared at this precision, as the transitions round sums.
_DIGITS = 10


def check_budget(budget: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``budget`` as stored, or ``InvalidInputError`` if ``maxUsd`` is not a non-negative number
    (other keys are free-form)."""
    if budget is None:
        return None
    if not isinstance(budget, Mapping):
        raise InvalidInputError(f"budget must be a mapping, not {budget!r}")
    limit = budget.get(MAX_USD)
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, int | float)
        or not math.isfinite(limit)
        or limit < 0
    ):
        raise InvalidInputError(f"budget {MAX_USD} must be a non-negative number, not {limit!r}")
    return dict(budget)


def max_usd(budget: Mapping[str, Any] | None) -> float | None:
    """The run's spending limit, or None when it has none."""
    if not budget:
        return None
    limit = budget.get(MAX_USD)
    return None if limit is None else float(limit)


def step_reservation(step: StepState) -> float:
    """What a step in flight counts against the budget: the most of its accrued cost, its
    estimate and the cost of a result waiting for approval."""
    pending = step.approval.cost_usd if step.approval is not None else 0.0
    return max(step.accrued_cost_usd, step.estimated_cost_usd or 0.0, pending)


def _in_flight(steps: Sequence[StepState]) -> list[StepState]:
    waiting = [step for step in steps if step.status is StepStatus.WAITING]
    return [*active_steps(steps), *waiting]


@dataclass(frozen=True, slots=True)
class Admission:
    """Which candidate steps may start within the budget, and which are held back."""

    admitted: tuple[str, ...]
    held: tuple[str, ...]
    #: What the run counted before the candidates (spent and reserved by the other steps).
    spent_usd: float
    #: What the first held step needed (0.0 when none was held).
    needed_usd: float = 0.0


def admit(
    run_cost_usd: float,
    steps: Sequence[StepState],
    candidates: Iterable[str],
    limit_usd: float | None,
) -> Admission:
    """Admit ``candidates`` (step ids, in order) while the budget allows, holding back the rest.

    ``steps`` are the run's steps as they will be committed; the candidates are counted only as
    they are admitted. With no limit every candidate is admitted.
    """
    order = list(dict.fromkeys(candidates))
    by_id = {step.step_id: step for step in steps}
    spent = run_cost_usd + sum(
        step_reservation(step) for step in _in_flight(steps) if step.step_id not in order
    )
    spent = round(spent, _DIGITS)
    if limit_usd is None:
        return Admission(tuple(order), (), spent)
    admitted: list[str] = []
    held: list[str] = []
    needed = 0.0
    total = spent
    for step_id in order:
        need = step_reservation(by_id[step_id])
        if total < limit_usd and round(total + need, _DIGITS) <= limit_usd:
            admitted.append(step_id)
            total = round(total + need, _DIGITS)
        else:
            if not held:
                needed = need
            held.append(step_id)
    return Admission(tuple(admitted), tuple(held), spent, needed)
