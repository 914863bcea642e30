"""Argument checks shared by every layer: each returns the value or raises ``InvalidInputError``.

Private: the store, the Celery layer, the receiver and the CLI import them from here; no public
module re-exports them (``tests/test_exports.py``).
"""

from __future__ import annotations

import math

from mpstate.errors import InvalidInputError
from mpstate.fields import MAX_ID_LENGTH, MAX_SAFE_INTEGER

__all__ = ["check_id", "check_int", "check_positive"]


def check_id(value: object, what: str) -> str:
    """Validate an id argument: a non-empty string of at most ``MAX_ID_LENGTH`` characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError(f"{what} is longer than {MAX_ID_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid unicode text") from exc
    return value


def check_int(value: object, what: str, *, minimum: int) -> int:
    """Validate an integer argument from ``minimum`` to ``MAX_SAFE_INTEGER`` (bools refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= MAX_SAFE_INTEGER
    ):
        raise InvalidInputError(
            f"{what} must be an integer from {minimum} to {MAX_SAFE_INTEGER}, not {value!r}"
        )
    return value


def check_positive(value: object, what: str, *, zero_ok: bool = False) -> float:
    """Validate a duration or size argument: a finite number above 0 (or 0 with ``zero_ok``)."""
    least = ">= 0" if zero_ok else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{what} must be a finite number {least}, not {value!r}")
    lowest_ok = value >= 0 if zero_ok else value > 0
    if not (lowest_ok and value < math.inf):  # NaN fails both comparisons
        raise InvalidInputError(f"{what} must be a finite number {least}, not {value!r}")
    return float(value)
