"""Committing one transition: decide on the run, commit at the version decided on, retry.

``Committer.apply`` reads the run, asks a pure function of ``mpstate.celery.transitions`` what to
write, and commits the patch and its events together with ``expected_version``; on a version
conflict it reads again and decides again. So of two workers racing to complete one step, exactly
one commits the completion. Publishing what a commit decided is the lifecycle's job
(``mpstate.celery.lifecycle``), done only by the winner.

Store outages (``StateStoreUnavailableError``) are retried with exponential backoff for a bounded
window, then raised: a transition is never dropped silently. The window is ONE deadline, taken
when ``apply`` starts (``time.monotonic() + outage_window_s``) and passed down: the retries of the
whole transition (read, decide, commit) and the retries of one commit inside it (same operation
id) stop at it, and no wait sleeps past it. Nested windows would add up: with 1 s, a transition
on a read-only Redis gave up after 3.4 s and 12 commit attempts; with 60 s, after about 3 min.

The bound: no retry starts after the deadline, but the store call in flight then runs to its end.
With the store down, ``apply`` raises within ``outage_window_s + W``, W being the longest one
store call can block. W is the store's own: ``RedisPipelineStateStore.from_url`` retries each
request below this layer, not knowing the deadline; with its defaults (``socket_timeout`` 5 s,
``socket_connect_timeout`` 2 s, ``retries`` 2, backoff 0.1 + 0.2 s) W <= 3 * (2 + 5) + 0.3 =
21.3 s (15.3 s for a hung server, about 0.3 s for a refused connection), so the default 60 s
window ends within about 81 s. Shorter store timeouts shrink W. A store that answers the read in
flight at the deadline is back: the commit that follows still gets one attempt (W at most).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from mpstate._checks import check_positive
from mpstate.celery.transitions import Transition
from mpstate.changes import CommitResult
from mpstate.errors import RunNotFoundError, StateStoreUnavailableError, VersionConflictError
from mpstate.models import PipelineRun
from mpstate.patches import trusted_patch
from mpstate.store import PipelineStateStore

__all__ = ["Committed", "Committer", "Decide"]

log = logging.getLogger("mpstate.celery")

#: Decides one transition on the run as stored (None: nothing to do).
Decide = Callable[[PipelineRun], Transition | None]

#: Versions conflicts tolerated for one transition before giving up (each is another writer's
#: successful commit, so this only trips under pathological contention).
MAX_CONFLICTS = 100

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Committed:
    """The run after a transition, and the transition if one was written (None: a no-op)."""

    run: PipelineRun
    transition: Transition | None

    @property
    def changed(self) -> bool:
        return self.transition is not None


class Committer:
    """Commits transitions to one store, through version conflicts and store outages."""

    def __init__(self, store: PipelineStateStore, *, outage_window_s: float = 60.0) -> None:
        self.store = store
        #: How long one transition rides out a store outage (see the module's docstring).
        self.outage_window_s = check_positive(outage_window_s, "outage_window_s")

    def apply(self, run_id: str, decide: Decide, *, known: PipelineRun | None = None) -> Committed:
        """Decide on the current run and commit the result; retried on conflicts and outages.

        ``known`` is the run as a previous commit returned it: the first decision is taken on it
        without reading, and the run is read only if its version turns out to be stale.
        """
        deadline = time.monotonic() + self.outage_window_s
        return self._apply_through_outage(run_id, decide, known, deadline)

    def _apply_through_outage(
        self, run_id: str, decide: Decide, known: PipelineRun | None, deadline: float
    ) -> Committed:
        """``_apply_once``, retried through an outage until ``deadline``. Only the first attempt
        decides on ``known``: after an outage, which may hide whether a commit was applied, the
        run is read again."""
        return _through_outage(
            run_id,
            deadline,
            "applying a transition to",
            lambda attempt: self._apply_once(
                run_id, decide, known if attempt == 1 else None, deadline
            ),
        )

    def _apply_once(
        self, run_id: str, decide: Decide, known: PipelineRun | None, deadline: float
    ) -> Committed:
        for conflicts in range(MAX_CONFLICTS):
            run = known if known is not None else self.store.get(run_id, include_events=False)
            known = None
            if run is None:
                raise RunNotFoundError(run_id)
            transition = decide(run)
            if transition is None:
                return Committed(run, None)
            try:
                result = self._commit(run_id, run, transition, deadline)
            except VersionConflictError:
                # Another writer committed first: decide again on what it wrote.
                time.sleep(random.uniform(0, 0.002 * min(conflicts, 10)))
                continue
            return Committed(result.run, transition)
        raise VersionConflictError(run_id, expected=-1, actual=-1)

    def _commit(
        self, run_id: str, run: PipelineRun, transition: Transition, deadline: float
    ) -> CommitResult:
        """Commit one decision, retrying the very same commit (same operation id) through an
        outage until ``apply``'s deadline: if an attempt was applied but its reply lost, the retry
        reports it as applied, so the transition, and the advancement it carries, is not mistaken
        for a duplicate."""
        operation_id = uuid.uuid4().hex
        # Built from validated models (mpstate.celery.transitions): not validated again.
        patch = trusted_patch(transition.patch) if transition.patch else None
        return _through_outage(
            run_id,
            deadline,
            "committing a transition to",
            lambda _attempt: self.store.commit(
                run_id,
                patch,
                transition.events,
                expected_version=run.version,
                operation_id=operation_id,
                base=run,  # the run comes back built from it, not read and decoded
            ),
        )


def _through_outage(run_id: str, deadline: float, doing: str, call: Callable[[int], T]) -> T:
    """``call(attempt)`` (attempts from 1), retried on ``StateStoreUnavailableError`` with
    backoff until ``deadline`` (monotonic): no attempt starts after it, and the last wait is cut
    short so one attempt lands on it. The first attempt is a plain call (this wraps two calls of
    every transition, so the happy path builds no retry machinery); its failure is handed to
    tenacity, which waits, logs and retries as if it had made that attempt itself."""
    try:
        return call(1)
    except StateStoreUnavailableError as error:
        first_failure = error
    for attempt in _outage_retrying(run_id, deadline, doing):
        with attempt:
            number = attempt.retry_state.attempt_number
            if number == 1:
                raise first_failure
            return call(number)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _outage_retrying(run_id: str, deadline: float, doing: str) -> Retrying:
    """Retry ``StateStoreUnavailableError`` with backoff until ``deadline`` (monotonic): no
    attempt starts after it, and the last wait is cut short so one attempt lands on it."""
    backoff = wait_exponential(multiplier=0.05, max=5.0) + wait_random(0, 0.05)

    def wait(state: RetryCallState) -> float:
        return max(0.0, min(backoff(state), deadline - time.monotonic()))

    def past_deadline(_state: RetryCallState) -> bool:
        return time.monotonic() >= deadline

    return Retrying(
        retry=retry_if_exception_type(StateStoreUnavailableError),
        wait=wait,
        stop=past_deadline,
        reraise=True,
        before_sleep=lambda state: log.warning(
            "store unavailable while %s run %r (attempt %d, %.1f s left); retrying",
            doing,
            run_id,
            state.attempt_number,
            max(0.0, deadline - time.monotonic()),
        ),
    )
