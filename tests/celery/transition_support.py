"""A run moved along by committing pure transitions to an in-memory store (no Celery).

The store only carries the state from one decision to the next, with ``expected_version`` as the
lifecycle commits it; every step a transition publishes must be recorded with its task id.
"""

from __future__ import annotations

from mpstate import InMemoryPipelineStateStore, PipelineRun
from mpstate.celery.transitions import Transition, start_run

__all__ = ["CommittedRun"]


class CommittedRun:
    """A run in an in-memory store, moved along by committing transitions."""

    def __init__(self, run: PipelineRun, *, started: bool = True) -> None:
        self.store = InMemoryPipelineStateStore()
        self.run_id = self.store.create(run).run_id
        #: Every step id published, in order, over the run's life.
        self.published: list[str] = []
        if started:
            self.apply(start_run(self.run))

    @property
    def run(self) -> PipelineRun:
        return self.store.require(self.run_id)

    def apply(self, transition: Transition | None) -> PipelineRun:
        """Commit ``transition`` at the version it was decided on; the run after it."""
        assert transition is not None
        committed = self.store.commit(
            self.run_id,
            transition.patch or None,
            transition.events,
            expected_version=self.run.version,
        ).run
        for step in transition.enqueue:
            assert step.task_id is not None
            assert committed.step(step.step_id).task_id == step.task_id
        self.published.extend(step.step_id for step in transition.enqueue)
        return self.run
