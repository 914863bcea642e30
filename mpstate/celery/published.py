"""The runs this process last published steps from, so starting such a step needs no read.

A commit that makes steps ready returns the run as written, and its winner publishes each ready
step with the run's version in the message (``identity.RUN_VERSION``). When the same process then
starts one of those steps (a solo or threads worker running a run's steps in turn, or a busy
prefork child), the run it would read is the one it remembers: step-started is decided on that
copy and committed with ``expected_version``, exactly as after a read. The copy is used only when
both the version in the message and the step's recorded task id match it, so a copy that another
writer has since moved past is never decided on; a miss simply reads, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from mpstate.models import PipelineRun

__all__ = ["PublishedRuns"]

#: Runs remembered per process (the newest): one per run with a step in flight from here.
RUNS_KEPT = 256


class PublishedRuns:
    """A small thread-safe LRU of run id -> the run as the commit that published its steps
    wrote it."""

    def __init__(self, kept: int = RUNS_KEPT) -> None:
        self._kept = kept
        self._runs: OrderedDict[str, PipelineRun] = OrderedDict()
        self._mutex = threading.Lock()

    def remember(self, run: PipelineRun) -> None:
        with self._mutex:
            self._runs[run.run_id] = run
            self._runs.move_to_end(run.run_id)
            if len(self._runs) > self._kept:
                self._runs.popitem(last=False)

    def take(
        self, run_id: str, step_id: str, *, version: int | None, task_id: str | None
    ) -> PipelineRun | None:
        """The remembered run if the message that started ``step_id`` was published from it
        (same version, and the step records that message's task id); None otherwise."""
        if version is None or not task_id:
            return None
        with self._mutex:
            run = self._runs.get(run_id)
            if run is None or run.version != version:
                return None
            step = next((s for s in run.steps if s.step_id == step_id), None)
            if step is None or step.task_id != task_id:
                return None
            del self._runs[run_id]  # the start moves the run on: this copy is stale after it
            return run
