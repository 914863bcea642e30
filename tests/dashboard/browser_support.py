"""Helpers for the dashboard's browser test: a three-step pipeline held on latches, and Chromium.

Each step's body waits on a latch named after its run and step (``latch_name``) unless the run's
inputs say ``hold: False``: the test releases the steps one by one and watches the page follow.
``fail: <step id>`` in the inputs makes that step fail for good (the run fails).
The browser is Debian's chromium (``make test`` installs it), driven by Playwright; Playwright's
own browser downloads are never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery_support import DEADLINE, Harness

from mpstate.celery import PipelineTask

#: The browser the test drives (the Makefile's ``test`` target installs it when missing).
CHROMIUM = Path("/usr/bin/chromium")

#: The pipeline: three steps, one after the other.
PIPELINE = "render-video"
STEP_IDS = ("fetch", "render", "publish")
COSTS = {"fetch": 0.01, "render": 0.25, "publish": 0.02}


def latch_name(run_id: str, step_id: str) -> str:
    return f"{run_id}/{step_id}"


class StepBrokeError(Exception):
    """What a step asked to fail raises (not retried: the run fails)."""


def pipeline_steps(*, estimates: bool = False) -> list[dict[str, Any]]:
    """The run's steps: a linear run (no ``dependsOn``) of the tasks ``define_steps`` defines;
    with ``estimates``, each step's cost estimate (what a budget counts before it runs)."""
    return [
        {"stepId": step_id, "operation": f"browser.{step_id}"}
        | ({"estimatedCostUsd": COSTS[step_id]} if estimates else {})
        for step_id in STEP_IDS
    ]


def define_steps(h: Harness) -> None:
    """Define ``browser.<step>`` on the harness's app for every step of the pipeline."""
    for step_id in STEP_IDS:
        _define(h, step_id)


def _define(h: Harness, step_id: str) -> None:
    @h.app.task(base=PipelineTask, bind=True, shared=False, name=f"browser.{step_id}")
    def body(self: Any, **inputs: Any) -> dict[str, Any]:
        if inputs.get("fail") == step_id:
            raise StepBrokeError(f"{step_id}: the source file is unreadable")
        if inputs.get("hold", True):
            released = h.latch(latch_name(self.run_id, step_id)).wait(DEADLINE)
            assert released, f"step {step_id} of {self.run_id} was never released"
        return {
            "artifactIds": [f"{step_id}-{self.run_id[-6:]}"],
            "costUsd": COSTS[step_id],
            "outputs": {"step": step_id},
        }
