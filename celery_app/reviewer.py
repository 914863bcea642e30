"""The demo's stand-in operator: answers suspended runs after a short delay.

A run suspended for a gate is approved, one suspended for its budget is resumed with a higher
budget, each through the same ``MpState`` calls ``mpstate runs approve`` and ``mpstate runs
resume`` make; the reviewer prints the command an operator would have typed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mpstate import MpStateError, PipelineRun, SuspendReason
from mpstate.celery import MpState

__all__ = ["Reviewer"]

#: How often the reviewer looks at its runs.
LOOK_EVERY_S = 0.2


class Reviewer:
    """Answers each suspension of the given runs ``delay_s`` after it began, in a thread."""

    def __init__(
        self,
        mp: MpState,
        *,
        delay_s: float,
        raise_budget_to: float,
        say: Callable[[str], None],
    ) -> None:
        self.mp = mp
        self.delay_s = delay_s
        self.raise_budget_to = raise_budget_to
        self.say = say
        self._run_ids: list[str] = []
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-reviewer", daemon=True)

    def watch(self, run: PipelineRun) -> None:
        self._run_ids.append(run.run_id)

    def __enter__(self) -> Reviewer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(LOOK_EVERY_S):
            for run_id in list(self._run_ids):
                run = self.mp.store.get(run_id, include_events=False)
                if run is None or not run.resumable or run.resume_token is None:
                    continue
                first_seen = self._seen.setdefault(run.resume_token, time.monotonic())
                if time.monotonic() - first_seen >= self.delay_s:
                    self._answer(run)

    def _answer(self, run: PipelineRun) -> None:
        token = run.resume_token
        assert token is not None
        try:
            if run.suspend_reason is SuspendReason.GATE:
                self.say(f"reviewer: mpstate runs approve {run.run_id} --note 'looks good'")
                self.mp.approve(run.run_id, token, by="demo-reviewer", note="looks good")
            elif run.suspend_reason is SuspendReason.BUDGET:
                self.say(
                    f"reviewer: mpstate runs resume {run.run_id} "
                    f"--raise-budget {self.raise_budget_to:.2f}"
                )
                self.mp.resume(
                    run.run_id, token, budget={"maxUsd": self.raise_budget_to}, by="demo-reviewer"
                )
        except MpStateError as exc:  # answered meanwhile (a token is single-use)
            self.say(f"reviewer: {exc}")
