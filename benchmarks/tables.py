"""The benchmarks' text tables: one aligned-table renderer, one number format, and the goals.

A goal is reported, never enforced: the machine is shared and noisy, so a benchmark prints PASS or
MISS (or "info" for a figure given only for reference) and always finishes. Every benchmark builds
its goals as ``Goal`` values and renders and serialises them here, so they read the same in every
table and every results file.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Goal", "goal_cells", "number", "render", "render_goals"]

#: ``floor``: a figure reported for reference against the least it could be (no PASS or MISS).
Comparison = Literal[">=", "<=", "<", "floor"]

_CHECKS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}


def render(
    headers: Sequence[str], lines: Sequence[Sequence[str]], left: Collection[int] = (0,)
) -> str:
    """An aligned text table: the columns in ``left`` are left-aligned, the others right."""
    widths = [max(len(str(cells[i])) for cells in [headers, *lines]) for i in range(len(headers))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(widths[i]) if i in left else str(cell).rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(headers), rule, *(fmt(line) for line in lines)])


def number(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators and ``digits`` decimals; "-" for None."""
    return "-" if value is None else f"{value:,.{digits}f}"


@dataclass(frozen=True, slots=True)
class Goal:
    """What a benchmark aims for and what it measured: ``value`` ``comparison`` ``goal``."""

    #: The key in the results file (a row's name where the goal is about one row).
    operation: str
    #: What is measured, for people.
    label: str
    comparison: Comparison
    goal: float
    value: float
    #: Printed after the goal ("x raw EVALSHA", "us/step"); empty for a plain count.
    unit: str = ""
    #: Decimals of the measured value in the table.
    digits: int = 3
    #: Context for the reader: the other baseline, the parts of a total.
    note: str = ""

    @property
    def met(self) -> bool | None:
        """True or False against the goal; None for a ``floor`` (reported for reference)."""
        check = _CHECKS.get(self.comparison)
        return None if check is None else check(self.value, self.goal)

    @property
    def verdict(self) -> str:
        met = self.met
        return "info" if met is None else "PASS" if met else "MISS"

    @property
    def target(self) -> str:
        """The goal as text: ">= 0.7 x raw EVALSHA", "floor 2"."""
        return " ".join(part for part in (self.comparison, f"{self.goal:g}", self.unit) if part)

    def as_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "label": self.label,
            "target": self.target,
            "comparison": self.comparison,
            "goal": self.goal,
            "unit": self.unit,
            "value": self.value,
            "met": self.met,
            "verdict": self.verdict,
            "note": self.note,
        }


def goal_cells(goal: Goal | None) -> tuple[str, str]:
    """The "target" and "result" cells of a table row (empty for a row without a goal)."""
    return ("", "") if goal is None else (goal.target, goal.verdict)


def render_goals(goals: Sequence[Goal]) -> str:
    """The goals as a table: what, the goal, the measured value, PASS/MISS/info, a note."""
    lines = [
        (goal.label, goal.target, number(goal.value, goal.digits), goal.verdict, goal.note)
        for goal in goals
    ]
    return render(("goal", "target", "measured", "result", "note"), lines, left=(0, 1, 3, 4))
