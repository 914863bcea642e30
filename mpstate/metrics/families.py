"""Every metric mpstate exports, defined once: names, help, label names and buckets.

Label values are pipeline ids, tenant ids, operations (task names), provider names, and short
codes, outcomes and reasons: never run, step, job or task ids, so a series is never created per
run. Pipelines, tenants, operations and providers are assumed bounded (they are named by your
code and your customers); with many tenants, drop the tenant label (``tenant_label=False``).
Failure codes can come from a provider's payload, so each process keeps at most
``MAX_CODES`` of them and counts the rest as ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_CODES",
    "OTHER",
    "PROVIDER_WAIT",
    "QUEUE_WAIT",
    "RETRIES",
    "RUNS",
    "RUNS_CANCELLED",
    "RUNS_COMPLETED",
    "RUNS_FAILED",
    "RUNS_STARTED",
    "RUN_COST",
    "STEP_DURATION",
    "STORE_UP",
    "WEBHOOK_ANSWERS",
    "WEBHOOK_UNMATCHED",
    "Family",
]

#: The label value for a value past a label's bound (an unconfigured provider, a code too many).
OTHER = "other"

#: Distinct failure codes one process labels; later new codes are counted as ``other``.
MAX_CODES = 50


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name (counters without ``_total``), help text and label names."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


_RUN = ("pipeline", "tenant")

# -- counted by the lifecycle observer (``RunMetrics``), in the process that commits ------------

RUNS_STARTED = Family("mpstate_runs_started", "Runs started (run-started).", _RUN)
RUNS_COMPLETED = Family("mpstate_runs_completed", "Runs completed (run-completed).", _RUN)
RUNS_FAILED = Family(
    "mpstate_runs_failed", "Runs failed (run-failed), by failure code.", (*_RUN, "code")
)
RUNS_CANCELLED = Family(
    "mpstate_runs_cancelled", "Runs cancelled through MpState.cancel_run (run-cancelled).", _RUN
)
RUN_COST = Family(
    "mpstate_run_cost_usd", "Cost in USD of the steps completed (step-completed costUsd).", _RUN
)
STEP_DURATION = Family(
    "mpstate_step_duration_seconds",
    "From a step's first start to its completion or final failure (retries and provider "
    "waits included), by operation and outcome (completed, cached, failed).",
    ("operation", "outcome"),
    (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
QUEUE_WAIT = Family(
    "mpstate_step_queue_wait_seconds",
    "From mpstate publishing a step's task to a worker starting it, by operation.",
    ("operation",),
    (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
RETRIES = Family(
    "mpstate_step_retries",
    "Step attempts that failed and will run again, by operation.",
    ("operation",),
)
PROVIDER_WAIT = Family(
    "mpstate_provider_wait_seconds",
    "From a step handing its work to a provider (step-waiting) to the provider's answer "
    "completing or failing it, by provider and outcome (completed, failed).",
    ("provider", "outcome"),
    (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0),
)

# -- counted by the webhook receiver -------------------------------------------------------------

WEBHOOK_ANSWERS = Family(
    "mpstate_webhook_answers",
    "Callbacks answered by the receiver, by provider, answer (resumed, failed, ignored, "
    "duplicate, progress, unmatched, unknown-job, accepted, refused-<status>) and reason "
    "(why it was refused or unmatched; empty otherwise).",
    ("provider", "answer", "reason"),
)

# -- read from the store at each scrape (exact across processes) ---------------------------------

RUNS = Family("mpstate_runs", "Runs in the store, by status.", ("status",))
WEBHOOK_UNMATCHED = Family(
    "mpstate_webhook_unmatched",
    "Callbacks that could never reach a step, by provider and reason.",
    ("provider", "reason"),
)
STORE_UP = Family("mpstate_store_up", "1 when the store answered this scrape's reads, else 0.", ())
