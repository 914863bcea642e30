"""The benchmarks' text tables: one aligned-table renderer and one number format for all."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["number", "render"]


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
