"""Tables that fit the terminal without ever breaking an id.

Each column says what it holds and how much it matters. An id (a run id, a Celery task id) is
printed whole on one line, so it can be copied. When the table is wider than the terminal, the
least important columns are left out first; the room that leaves is then given back, most
important first, to left-out columns that fit in it (a free-text column folding onto more lines
if it gets at least ``FOLD_MIN`` cells). A column marked ``keep`` is left out only when folding
cannot make the table fit. Nothing is ever cut off with an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

__all__ = ["FOLD_MIN", "Cell", "Column", "FittedTable", "fit_table"]

#: What a cell holds: user data as ``Text`` (printed as written), or plain text we wrote.
Cell = Text | str

#: Spaces between two columns (rich's default padding of one on each side; none at the edges).
GAP = 2

#: Fewest cells a free-text column is folded into; narrower than that it is left out instead.
FOLD_MIN = 16


@dataclass(frozen=True)
class Column:
    """One column: its header, what it holds, and when it is left out."""

    name: str
    #: ``id``: never wrapped nor cut; ``fixed``: short values kept on one line (status, cost,
    #: times); ``text``: free text that folds when the table is too wide.
    kind: Literal["id", "fixed", "text"] = "fixed"
    #: Left out in this order (lowest first) while the table is too wide; ``None``: always shown.
    drop: int | None = None
    #: Left out only when even folding every text column cannot make the table fit.
    keep: bool = False
    justify: Literal["left", "right"] = "left"


@dataclass(frozen=True)
class FittedTable:
    """The table to print, and the names of the columns left out to fit it."""

    table: Table
    dropped: tuple[str, ...]


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + GAP * max(0, len(widths) - 1)


def fit_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None
) -> FittedTable:
    """A table of ``rows`` (one cell per column) that fits ``width`` cells (``None``: any width).

    1. While the table's natural width (every cell on one line) is more than ``width``, the
       column with the lowest ``drop`` is left out (a ``keep`` column only once even folding
       the text columns down to ``FOLD_MIN`` could not fit).
    2. Left-out columns, most important first, come back if the table still fits with them (a
       text column counted at ``FOLD_MIN``, the columns already shown at their natural width).
    3. Rich folds the text columns to fit. Id and fixed columns keep their whole width, unless
       even they do not fit (a terminal narrower than the ids): then everything folds.
    """
    natural = [
        max([cell_len(column.name), *(_width(row[index]) for row in rows)])
        for index, column in enumerate(columns)
    ]

    def folded(index: int) -> int:
        """The column's width with its text folded as far as it is worth folding."""
        return min(natural[index], FOLD_MIN) if columns[index].kind == "text" else natural[index]

    kept = list(range(len(columns)))
    dropped: list[int] = []
    while width is not None and _total([natural[i] for i in kept]) > width:
        folding_fits = _total([folded(i) for i in kept]) <= width
        droppable = [
            (rank, i)
            for i in kept
            if (rank := columns[i].drop) is not None and not (columns[i].keep and folding_fits)
        ]
        if not droppable:
            break
        lowest = min(droppable)[1]
        kept.remove(lowest)
        dropped.append(lowest)
    for index in reversed(dropped):
        shown = [natural[i] for i in kept]
        if width is not None and _total([*shown, folded(index)]) <= width:
            kept = sorted([*kept, index])
    rigid_fits = width is None or _total([folded(i) for i in kept]) <= width

    table = Table(box=None, header_style="bold", pad_edge=False)
    for i in kept:
        column = columns[i]
        whole = rigid_fits and column.kind != "text"
        table.add_column(
            column.name,
            justify=column.justify,
            no_wrap=whole,
            overflow="fold",
            min_width=natural[i] if whole and column.kind == "id" else None,
        )
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    left_out = tuple(column.name for i, column in enumerate(columns) if i not in kept)
    return FittedTable(table, left_out)
