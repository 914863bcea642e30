"""``StepLifecycle``: the one place that applies step transitions to the store.

Both entry points call it: ``PipelineTask``'s hooks and the signal receivers for plain tasks. Each
transition reads the run, asks a pure function of ``mpstate.celery.transitions`` what to write,
and commits the patch and its events together with ``expected_version``; on a version conflict it
reads again and decides again. So of two workers racing to complete one step, exactly one commits
the completion, and only that one enqueues the next step: advancement happens once.

Store outages (``StateStoreUnavailableError``) are retried with exponential backoff for a bounded
window (``outage_window_s``), then raised: a transition is never dropped silently.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from mpstate.celery.transitions import Transition
from mpstate.changes import CommitResult
from mpstate.errors import RunNotFoundError, StateStoreUnavailableError, VersionConflictError
from mpstate.models import PipelineRun, StepState
from mpstate.store import PipelineStateStore

__all__ = ["Committed", "StepLifecycle"]

log = logging.getLogger("mpstate.celery")

Decide = Callable[[PipelineRun], Transition | None]
#: Publishes a step's task: (run, step, task id or None for a fresh one).
Enqueue = Callable[[PipelineRun, StepState, str | None], None]

#: Versions conflicts tolerated for one transition before giving up (each is another writer's
#: successful commit, so this only trips under pathological contention).
MAX_CONFLICTS = 100


@dataclass(frozen=True, slots=True)
class Committed:
    """The run after a transition, and the transition if one was written (None: a no-op)."""

    run: PipelineRun
    transition: Transition | None

    @property
    def changed(self) -> bool:
        return self.transition is not None


class StepLifecycle:
    """Applies transitions to one store and enqueues the next step after an advancing commit."""

    def __init__(
        self,
        store: PipelineStateStore,
        enqueue: Enqueue,
        *,
        outage_window_s: float = 60.0,
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        self.outage_window_s = outage_window_s

    def apply(self, run_id: str, decide: Decide, *, known: PipelineRun | None = None) -> Committed:
        """Decide on the current run and commit the result; retried on conflicts and outages.

        ``known`` is the run as a previous commit returned it: the first decision is taken on it
        without reading, and the run is read only if its version turns out to be stale.
        """
        try:
            committed = self._apply_once(run_id, decide, known)
        except StateStoreUnavailableError:
            committed = self._apply_through_outage(run_id, decide)
        transition = committed.transition
        if transition is not None and transition.next_step is not None:
            self.enqueue(committed.run, transition.next_step, transition.next_task_id)
        return committed

    def _apply_through_outage(self, run_id: str, decide: Decide) -> Committed:
        committed: Committed = self._outage_retrying(run_id)(self._apply_once, run_id, decide, None)
        return committed

    def _outage_retrying(self, run_id: str) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(StateStoreUnavailableError),
            wait=wait_exponential(multiplier=0.05, max=5.0) + wait_random(0, 0.05),
            stop=stop_after_delay(self.outage_window_s),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "store unavailable while applying a transition to run %r (attempt %d); retrying",
                run_id,
                state.attempt_number,
            ),
        )

    def _apply_once(self, run_id: str, decide: Decide, known: PipelineRun | None) -> Committed:
        for conflicts in range(MAX_CONFLICTS):
            run = known if known is not None else self.store.get(run_id, include_events=False)
            known = None
            if run is None:
                raise RunNotFoundError(run_id)
            transition = decide(run)
            if transition is None:
                return Committed(run, None)
            try:
                result = self._commit(run_id, run, transition)
            except VersionConflictError:
                # Another writer committed first: decide again on what it wrote.
                time.sleep(random.uniform(0, 0.002 * min(conflicts, 10)))
                continue
            return Committed(result.run, transition)
        raise VersionConflictError(run_id, expected=-1, actual=-1)

    def _commit(self, run_id: str, run: PipelineRun, transition: Transition) -> CommitResult:
        """Commit one decision, retrying the very same commit (same operation id) through an
        outage: if an attempt was applied but its reply lost, the retry reports it as applied,
        so the transition, and the advancement it carries, is not mistaken for a duplicate."""
        operation_id = uuid.uuid4().hex
        for attempt in self._outage_retrying(run_id):
            with attempt:
                return self.store.commit(
                    run_id,
                    transition.patch or None,
                    transition.events,
                    expected_version=run.version,
                    operation_id=operation_id,
                )
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
