"""Waiting for a run and checking its log, in tests: ``wait_for_status``, ``assert_event_kinds``.

Both fail with ``AssertionError`` (a test failure, not an error) and a message that shows the run:
its status, its error and its log, one event a line.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Collection, Sequence
from typing import Protocol

from mpstate.errors import InvalidInputError
from mpstate.events import PipelineEvent
from mpstate.models import TERMINAL_RUN_STATUSES, PipelineRun, PipelineRunStatus
from mpstate.store import PipelineStateStore

__all__ = ["assert_event_kinds", "describe_log", "wait_for_status"]

#: How often ``wait_for_status`` reads the run, in seconds.
POLL_INTERVAL_S = 0.02


class HasStore(Protocol):
    """Anything with a ``store``: ``MpState`` (the ``mpstate_celery`` fixture)."""

    @property
    def store(self) -> PipelineStateStore: ...


def wait_for_status(
    source: PipelineStateStore | HasStore,
    run_id: str,
    status: str | Collection[str] = PipelineRunStatus.COMPLETED,
    *,
    timeout: float = 10.0,
) -> PipelineRun:
    """Poll the run until its status is ``status`` (one, or any of several); return it.

    ``source`` is a store or an ``MpState``. Fails at once when the run ends in another final
    status (a run that failed never completes), and after ``timeout`` seconds otherwise; the
    message shows the run's status, error and log.
    """
    store = source if isinstance(source, PipelineStateStore) else source.store
    wanted = _statuses(status)
    deadline = time.monotonic() + timeout
    while True:
        run = store.require(run_id)
        if run.status in wanted:
            return run
        if run.status in TERMINAL_RUN_STATUSES:
            raise AssertionError(
                f"run {run_id} ended {run.status}, never {_names(wanted)}\n{describe_log(run)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run_id} is still {run.status} after {timeout} s, not {_names(wanted)}\n"
                f"{describe_log(run)}"
            )
        time.sleep(POLL_INTERVAL_S)


def assert_event_kinds(
    run: PipelineRun | Sequence[PipelineEvent],
    expected: Sequence[str],
    *,
    step_id: str | None = None,
) -> None:
    """Assert the log's event kinds, in order, are ``expected``.

    ``run`` is a run read with its events (``store.get``, ``wait_for_status``) or a list of
    events. With ``step_id`` only that step's events are compared (parallel branches interleave:
    compare each branch alone). On a mismatch the message is a line diff of the kinds.
    """
    if isinstance(expected, str):
        raise InvalidInputError("expected is a list of event kinds, not one string")
    events = run.events if isinstance(run, PipelineRun) else list(run)
    if step_id is not None:
        events = [event for event in events if getattr(event, "step_id", None) == step_id]
    actual = [event.kind for event in events]
    if actual == list(expected):
        return
    scope = f" of step {step_id}" if step_id is not None else ""
    diff = "\n".join(difflib.ndiff(list(expected), actual))
    raise AssertionError(
        f"event kinds{scope} differ (- expected, + actual):\n{diff}\n"
        f"the log:\n{describe_log(run) if isinstance(run, PipelineRun) else _lines(events)}"
    )


def describe_log(run: PipelineRun) -> str:
    """The run's status, error and log as text, one event a line (for failure messages)."""
    head = f"  status {run.status}, version {run.version}"
    if run.error:
        head += f", error {run.error!r}"
    return head + "\n" + _lines(run.events)


def _lines(events: Sequence[PipelineEvent]) -> str:
    if not events:
        return "  (no events)"
    lines = []
    for event in events:
        step = getattr(event, "step_id", None)
        seq = "-" if event.seq is None else str(event.seq)
        lines.append(f"  {seq:>3} {event.kind}" + (f" [{step}]" if step else ""))
    return "\n".join(lines)


def _statuses(status: str | Collection[str]) -> frozenset[PipelineRunStatus]:
    names = [status] if isinstance(status, str) else list(status)
    try:
        return frozenset(PipelineRunStatus(name) for name in names)
    except ValueError:
        known = ", ".join(s.value for s in PipelineRunStatus)
        raise InvalidInputError(f"unknown run status in {names!r}; known: {known}") from None


def _names(statuses: frozenset[PipelineRunStatus]) -> str:
    return " or ".join(sorted(statuses))
