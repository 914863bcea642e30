"""Click parameter types of the CLI: ``WHEN``, a moment given as ISO-8601 or as "that long ago",
``DURATION``, a length of time given as ``90s``, ``10m``, ``2h`` or plain seconds, and
``SEQ_OR_WHEN``, an event seq or a ``WHEN`` (``events --since``).

Operators ask for "the last two hours" far more often than for a timestamp, so ``2h`` is
accepted wherever a time is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

__all__ = ["DURATION", "SEQ_OR_WHEN", "WHEN", "Duration", "SeqOrWhen", "When"]

if TYPE_CHECKING:
    _DatetimeParam = click.ParamType[datetime]
else:  # ParamType is generic only since click 8.2; the extra allows 8.1
    _DatetimeParam = click.ParamType

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")


class When(_DatetimeParam):
    """ISO-8601 (naive means UTC, as in the store) or ``<n><s|m|h|d|w>`` meaning that long ago."""

    name = "when"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        relative = _RELATIVE.fullmatch(text)
        if relative:
            amount, unit = relative.groups()
            try:
                return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
            except OverflowError:
                self.fail(f"{text!r} is too long ago", param, ctx)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither ISO-8601 (2024-05-01T12:00:00Z) "
                "nor a duration like 30m, 2h or 7d",
                param,
                ctx,
            )
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


WHEN = When()


if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]
else:
    _FloatParam = click.ParamType


class Duration(_FloatParam):
    """Seconds, given as a number or as ``<n><s|m|h|d|w>``; more than zero."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(value).strip()
            relative = _RELATIVE.fullmatch(text)
            try:
                seconds = (
                    timedelta(**{_UNITS[relative[2]]: int(relative[1])}).total_seconds()
                    if relative
                    else float(text)
                )
            except (ValueError, OverflowError):
                self.fail(f"{text!r} is not a duration like 90, 30s, 10m or 2h", param, ctx)
        if not 0 < seconds < float("inf"):
            self.fail(f"{value!r} must be more than zero", param, ctx)
        return seconds


DURATION = Duration()


if TYPE_CHECKING:
    _SeqOrWhenParam = click.ParamType[int | datetime]
else:
    _SeqOrWhenParam = click.ParamType

_INTEGER = re.compile(r"[+-]?\d+")


class SeqOrWhen(_SeqOrWhenParam):
    """A bare integer is an event seq (>= 0); anything else is a ``WHEN``."""

    name = "seq|when"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | datetime:
        if isinstance(value, datetime):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            seq = value
        else:
            text = str(value).strip()
            if not _INTEGER.fullmatch(text):
                return WHEN.convert(text, param, ctx)
            seq = int(text)
        if seq < 0:
            self.fail(
                f"{seq} is not a seq (>= 0), a duration like 2h, or an ISO-8601 time", param, ctx
            )
        return seq


SEQ_OR_WHEN = SeqOrWhen()
