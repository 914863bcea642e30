"""``StoreOptions``: the lifetimes and lock timings every store takes, listed once.

Each store constructor takes ``options=StoreOptions(...)`` and the same fields as keyword
overrides (``**overrides: Unpack[StoreOptionFields]``), merged by ``StoreOptions.merged``; a test
keeps the ``TypedDict``'s fields equal to the dataclass's (tests/store/test_options.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypedDict

from mpstate._checks import check_int, check_positive
from mpstate.deliveries import UNMATCHED_KEPT
from mpstate.errors import InvalidInputError

__all__ = ["StoreOptionFields", "StoreOptions"]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Lifetimes and lock timings shared by every backend (seconds and milliseconds).

    The in-memory stores enforce the lock and delivery timings only: nothing they hold outlives
    the process, so the run, idempotency and external job TTLs are accepted and not enforced.
    """

    run_ttl_seconds: float = 30 * 86400
    lock_ttl_seconds: float = 60
    idempotency_ttl_seconds: float = 86400
    external_job_ttl_seconds: float = 7 * 86400
    lock_acquire_timeout_ms: int = 5000
    lock_poll_interval_ms: int = 100
    #: Unmatched callbacks kept (the newest); ``count_unmatched`` counts every one regardless.
    unmatched_kept: int = UNMATCHED_KEPT

    def __post_init__(self) -> None:
        for name in (
            "run_ttl_seconds",
            "lock_ttl_seconds",
            "idempotency_ttl_seconds",
            "external_job_ttl_seconds",
        ):
            check_positive(getattr(self, name), name)
        check_int(self.lock_acquire_timeout_ms, "lock_acquire_timeout_ms", minimum=0)
        check_int(self.lock_poll_interval_ms, "lock_poll_interval_ms", minimum=1)
        check_int(self.unmatched_kept, "unmatched_kept", minimum=1)

    @property
    def lock_ttl_ms(self) -> int:
        return max(1, int(self.lock_ttl_seconds * 1000))

    @classmethod
    def merged(cls, options: StoreOptions | None, overrides: StoreOptionFields) -> StoreOptions:
        """``options`` (the defaults when None) with ``overrides`` applied: one options object
        can be shared by several stores and tweaked per store."""
        if options is None:
            return cls(**overrides)
        if not isinstance(options, StoreOptions):
            raise InvalidInputError(f"options must be a StoreOptions, not {options!r}")
        return replace(options, **overrides)


class StoreOptionFields(TypedDict, total=False):
    """``StoreOptions``' fields as keyword arguments, typed for the store constructors."""

    run_ttl_seconds: float
    lock_ttl_seconds: float
    idempotency_ttl_seconds: float
    external_job_ttl_seconds: float
    lock_acquire_timeout_ms: int
    lock_poll_interval_ms: int
    unmatched_kept: int
