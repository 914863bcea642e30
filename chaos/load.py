"""The load: runs started, some twice at once, some cancelled, and the reconciler sweeping.

Every call the driver makes rides out the Redis restart the way a production caller should:
``start_run`` is retried with the same idempotency key (so a retry never creates a second run,
and starts a run a failed call created), ``cancel_run`` is retried as it is idempotent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from celery_app.pipelines import PRODUCT_PHOTO
from chaos.config import ChaosConfig
from mpstate import InvalidTransitionError, PipelineRun, StateStoreUnavailableError
from mpstate.celery import MpState, Reconciler

if TYPE_CHECKING:
    from chaos.suspensions import SuspensionPlan

__all__ = ["Load", "PlannedRun"]

log = logging.getLogger("chaos.load")

T = TypeVar("T")

#: What a driver call may meet while Redis restarts (store, broker, cache).
TRANSIENT = (StateStoreUnavailableError, OperationalError, RedisError, ConnectionError, OSError)
#: How long a driver call keeps retrying through an outage.
OUTAGE_S = 60.0


def ride_out(call: Callable[[], T]) -> T:
    """``call()``, retried with backoff while the deployment is unavailable."""
    for attempt in Retrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(OUTAGE_S),
        reraise=True,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


@dataclass
class PlannedRun:
    """One run the driver starts, and what it will do to it."""

    index: int
    tenant_id: str
    prompt: str
    idempotency_key: str
    doomed: bool
    cancel_after_s: float | None
    double_submit: bool
    run_id: str | None = None
    started_at: float = 0.0
    cancelled: bool = False
    cancel_too_late: bool = False
    other_run_ids: set[str] = field(default_factory=set)
    #: A budget or an approval gate the run waits on (``chaos.suspensions``).
    suspension: SuspensionPlan | None = None

    def steps(self) -> list[dict[str, Any]]:
        """The product-photo graph: the image branch and the voice-over run in parallel."""
        inputs: dict[str, dict[str, Any]] = {"generate": {"prompt": self.prompt}}
        if self.doomed:  # no image scores above 1.0: the gate rejects it
            inputs["quality"] = {"min_quality": 1.01}
        steps = [
            {**step, "inputs": inputs.get(step["stepId"], step.get("inputs", {}))}
            for step in PRODUCT_PHOTO
        ]
        plan = self.suspension
        if plan is not None and plan.kind == "gate":  # a person signs off on the image
            gate = {"type": "approval", "timeoutS": plan.timeout_s, "onTimeout": plan.on_timeout}
            steps = [{**s, "gate": gate} if s["stepId"] == "quality" else s for s in steps]
        return steps

    def budget(self) -> dict[str, float] | None:
        plan = self.suspension
        if plan is None or plan.budget_usd is None:
            return None
        return {"maxUsd": plan.budget_usd}


def plan(config: ChaosConfig, rng: random.Random) -> list[PlannedRun]:
    """The runs of one chaos run, decided up front from the seed."""
    planned = []
    for index in range(config.runs):
        cancel = rng.random() < config.cancel_rate
        planned.append(
            PlannedRun(
                index=index,
                tenant_id=f"tenant-{index % config.tenants}",
                prompt=f"product shot {rng.randrange(config.prompts)}",
                idempotency_key=f"order-{config.seed}-{index}",
                doomed=rng.random() < config.doomed_rate,
                cancel_after_s=rng.uniform(0.2, 8.0) if cancel else None,
                double_submit=rng.random() < config.double_submit_rate,
            )
        )
    return planned


@dataclass
class Load:
    """Starts the planned runs over ``launch_s``, cancels some, and reconciles until stopped."""

    config: ChaosConfig
    mp: MpState
    runs: list[PlannedRun]
    reconciled: dict[str, int] = field(
        default_factory=lambda: {"requeued": 0, "failed": 0, "skipped": 0}
    )
    max_in_flight: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def start_all(self) -> None:
        """Start every run, spread over ``launch_s``; returns once all are started."""
        gap = self.config.launch_s / max(1, len(self.runs))
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="chaos-start") as pool:
            for planned in self.runs:
                pool.submit(self._start, planned)
                time.sleep(gap)

    def _start(self, planned: PlannedRun) -> None:
        def submit() -> PipelineRun:
            return ride_out(
                lambda: self.mp.start_run(
                    "product-photo",
                    planned.steps(),
                    tenant_id=planned.tenant_id,
                    idempotency_key=planned.idempotency_key,
                    budget=planned.budget(),
                )
            )

        planned.started_at = time.monotonic()
        if planned.double_submit:
            with ThreadPoolExecutor(max_workers=2) as pair:
                results = list(pair.map(lambda _: submit(), range(2)))
            planned.run_id = results[0].run_id
            planned.other_run_ids = {r.run_id for r in results[1:]} - {planned.run_id}
        else:
            planned.run_id = submit().run_id
        if planned.cancel_after_s is not None:
            timer = threading.Timer(planned.cancel_after_s, self._cancel, args=(planned,))
            timer.daemon = True
            timer.start()

    def _cancel(self, planned: PlannedRun) -> None:
        assert planned.run_id is not None
        run_id = planned.run_id
        try:
            ride_out(
                lambda: self.mp.cancel_run(
                    run_id, "chaos: cancelled by the operator", terminate=planned.index % 2 == 0
                )
            )
            planned.cancelled = True
        except InvalidTransitionError:
            planned.cancel_too_late = True  # it completed or failed first: a legal outcome

    def reconcile_until_stopped(self) -> None:
        """Sweep for stalled steps every ``reconcile_every_s`` until ``stop()``."""
        reconciler = Reconciler(self.mp, stale_after_s=self.config.stale_after_s)
        while not self._stop.wait(self.config.reconcile_every_s):
            try:
                report = reconciler.run_once()
            except TRANSIENT as exc:
                log.info("reconciler pass skipped: %r", exc)
                continue
            self.reconciled["requeued"] += len(report.requeued)
            self.reconciled["failed"] += len(report.failed)
            self.reconciled["skipped"] += len(report.skipped)

    def wait_until_terminal(self, bound_s: float) -> list[PlannedRun]:
        """Wait until every started run is terminal, at most ``bound_s`` after the last start;
        returns the runs still live then."""
        deadline = max(p.started_at for p in self.runs) + bound_s
        live = list(self.runs)
        while live and time.monotonic() < deadline:
            with suppress(*TRANSIENT):
                live = [p for p in live if not self._terminal(p)]
            time.sleep(0.5)
        return live

    def _terminal(self, planned: PlannedRun) -> bool:
        assert planned.run_id is not None
        run = self.mp.store.get(planned.run_id, include_events=False)
        return run is not None and run.is_terminal

    def _in_flight(self) -> int:
        tenants = {p.tenant_id for p in self.runs}
        try:
            live = self.mp.store.list_runs(status=["pending", "running", "suspended"])
        except TRANSIENT:
            return 0
        return sum(run.tenant_id in tenants for run in live)

    def sample_in_flight(self) -> None:
        self.max_in_flight = max(self.max_in_flight, self._in_flight())

    def stop(self) -> None:
        self._stop.set()
