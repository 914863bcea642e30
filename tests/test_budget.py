"""``mpstate.budget``: checking a run's budget, what a step reserves, and admitting steps."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mpstate import InvalidInputError
from mpstate.budget import MAX_USD, admit, check_budget, max_usd, step_reservation
from mpstate.definitions import new_run
from mpstate.models import Approval, StepState, StepStatus


def state(
    step_id: str,
    status: StepStatus = StepStatus.PENDING,
    *,
    est: float | None = None,
    accrued: float = 0.0,
    approval_cost: float | None = None,
    needs: list[str] | None = None,
) -> StepState:
    approval = (
        None
        if approval_cost is None
        else Approval(gate_type="approval", token="t" * 22, cost_usd=approval_cost)
    )
    return StepState(
        step_id=step_id,
        operation=f"op.{step_id}",
        status=status,
        estimated_cost_usd=est,
        accrued_cost_usd=accrued,
        approval=approval,
        depends_on=needs if needs is not None else [],
    )


# -- check_budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit",
    [-0.01, -1, math.nan, math.inf, -math.inf, True, False, "5", b"5", [5], {"usd": 5}],
    ids=repr,
)
def test_a_max_usd_that_is_not_a_non_negative_finite_number_is_refused(limit: Any) -> None:
    with pytest.raises(InvalidInputError, match=MAX_USD):
        check_budget({MAX_USD: limit})


@pytest.mark.parametrize("budget", [[("maxUsd", 5)], "maxUsd=5", 5, 5.0, ("maxUsd",)], ids=repr)
def test_a_budget_that_is_not_a_mapping_is_refused(budget: Any) -> None:
    with pytest.raises(InvalidInputError, match="mapping"):
        check_budget(budget)


def test_no_budget_is_none() -> None:
    assert check_budget(None) is None


@pytest.mark.parametrize("limit", [0, 0.0, 5, 2.5, 10**9])
def test_a_non_negative_max_usd_is_kept(limit: float) -> None:
    assert check_budget({MAX_USD: limit}) == {MAX_USD: limit}


def test_free_form_keys_are_kept_and_the_budget_is_copied() -> None:
    given: dict[str, Any] = {MAX_USD: 3, "owner": "ana", "alertAt": "not-a-number", "tags": [1]}
    checked = check_budget(given)
    assert checked == given
    assert checked is not given
    # Without maxUsd (or with it None) any other key is the caller's and is not read.
    assert check_budget({"owner": "ana", "maxUsd": None}) == {"owner": "ana", "maxUsd": None}
    assert check_budget({}) == {}


def test_new_run_checks_its_budget() -> None:
    steps = [{"stepId": "a", "operation": "op.a"}]
    with pytest.raises(InvalidInputError):
        new_run("p", steps, budget={MAX_USD: -1})
    assert new_run("p", steps, budget={MAX_USD: 2, "owner": "x"}).budget == {
        MAX_USD: 2,
        "owner": "x",
    }


# -- max_usd --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (None, None),
        ({}, None),
        ({"owner": "x"}, None),
        ({MAX_USD: None}, None),
        ({MAX_USD: 3}, 3.0),
    ],
)
def test_max_usd_is_the_limit_as_a_float_or_none(
    budget: dict[str, Any] | None, expected: float | None
) -> None:
    limit = max_usd(budget)
    assert limit == expected
    if expected is not None:
        assert isinstance(limit, float)


def test_a_zero_limit_is_a_limit_not_none() -> None:
    assert max_usd({MAX_USD: 0}) == 0.0


# -- step_reservation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("est", "accrued", "approval_cost", "expected"),
    [
        (None, 0.0, None, 0.0),
        (0.5, 0.0, None, 0.5),
        (0.5, 0.8, None, 0.8),
        (0.5, 0.2, 0.9, 0.9),
        (None, 0.3, 0.1, 0.3),
        (2.0, 0.3, 0.1, 2.0),
    ],
)
def test_a_step_reserves_the_most_of_accrued_estimate_and_pending_result(
    est: float | None, accrued: float, approval_cost: float | None, expected: float
) -> None:
    step = state("a", StepStatus.RUNNING, est=est, accrued=accrued, approval_cost=approval_cost)
    assert step_reservation(step) == expected


# -- admit ----------------------------------------------------------------------------------------


def test_without_a_limit_every_candidate_is_admitted_once_in_order() -> None:
    steps = [state(s, est=100.0) for s in "abc"]
    admission = admit(50.0, steps, ["c", "a", "c", "b"], None)
    assert admission.admitted == ("c", "a", "b")
    assert admission.held == ()
    assert admission.needed_usd == 0.0


def test_spent_counts_the_run_cost_and_the_other_steps_in_flight_only() -> None:
    steps = [
        state("done", StepStatus.COMPLETED, est=9.0, accrued=9.0),
        state("failed", StepStatus.FAILED, est=9.0),
        state("held", StepStatus.HELD, est=9.0),
        state("blocked", est=9.0, needs=["failed"]),  # pending, not ready: not queued
        state("running", StepStatus.RUNNING, est=0.1, accrued=0.2),
        state("queued", est=0.3),  # pending and ready: queued
        state("provider", StepStatus.WAITING, est=0.4),
        state("verdict", StepStatus.WAITING, approval_cost=0.5),
        state("candidate", est=7.0),
    ]
    admission = admit(1.0, steps, ["candidate"], 100.0)
    # 1.0 + running 0.2 + queued 0.3 + provider 0.4 + verdict 0.5; the candidate is not counted.
    assert admission.spent_usd == pytest.approx(2.4)
    assert admission.admitted == ("candidate",)


def test_candidates_are_admitted_greedily_in_order() -> None:
    steps = [state("a", est=0.8), state("b", est=0.5), state("c", est=0.2)]
    admission = admit(0.0, steps, ["a", "b", "c"], 1.0)
    assert admission.admitted == ("a", "c")
    assert admission.held == ("b",)
    assert admission.spent_usd == 0.0
    assert admission.needed_usd == 0.5  # what the first held step needed
    # Another order, another outcome: the order decides.
    other = admit(0.0, steps, ["b", "a", "c"], 1.0)
    assert other.admitted == ("b", "c")
    assert other.held == ("a",)
    assert other.needed_usd == 0.8


def test_a_step_that_exactly_fills_the_budget_is_admitted() -> None:
    steps = [state("a", est=0.2), state("b", est=0.1)]
    # 0.1 + 0.2 is 0.30000000000000004 in floats: compared rounded, it fits 0.3.
    assert admit(0.0, steps, ["a", "b"], 0.3).admitted == ("a", "b")
    assert admit(0.7, steps, ["a", "b"], 1.0).admitted == ("a", "b")


def test_once_the_limit_is_reached_even_a_free_step_is_held() -> None:
    steps = [state("a"), state("b", est=0.0)]
    admission = admit(1.0, steps, ["a", "b"], 1.0)
    assert admission.admitted == ()
    assert admission.held == ("a", "b")
    assert admission.spent_usd == 1.0
    assert admission.needed_usd == 0.0


def test_a_zero_budget_holds_every_candidate() -> None:
    steps = [state("a"), state("b", est=0.01)]
    admission = admit(0.0, steps, ["a", "b"], 0.0)
    assert admission.admitted == ()
    assert admission.held == ("a", "b")


def test_a_step_over_the_limit_by_itself_is_held_with_what_it_needs() -> None:
    steps = [state("a", est=5.0)]
    admission = admit(0.5, steps, ["a"], 2.0)
    assert admission.held == ("a",)
    assert admission.spent_usd == 0.5
    assert admission.needed_usd == 5.0
