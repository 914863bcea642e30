"""``ChaosConfig``: the size of one chaos run and how hard it is shaken."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChaosConfig"]


class ChaosConfig(BaseModel):
    """What one chaos run does. Rates are probabilities per run (or per provider job)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runs: int = Field(default=200, ge=1)
    tenants: int = Field(default=5, ge=1)
    #: Seconds over which the runs are started (all of them are in flight together).
    launch_s: float = Field(default=10.0, ge=0)
    workers: int = Field(default=3, ge=1)
    concurrency: int = Field(default=2, ge=1)
    #: A worker child or a whole worker is SIGKILLed this often (seconds); 0: never.
    kill_every_s: float = Field(default=4.0, ge=0)
    #: At most this many kills (the scaled-down suite kills once).
    max_kills: int | None = Field(default=None, ge=0)
    #: Of the kills, the share that take the whole worker (its message waits for the reconciler).
    whole_worker_share: float = Field(default=0.35, ge=0, le=1)
    #: Seconds after the first run is started that Redis is killed and restarted (None: never).
    redis_restart_after_s: float | None = Field(default=12.0, ge=0)
    redis_down_s: float = Field(default=1.0, ge=0)
    #: Runs whose quality gate is set to reject: they must fail with gate-rejected.
    doomed_rate: float = Field(default=0.1, ge=0, le=1)
    #: Runs cancelled by the driver at a random moment.
    cancel_rate: float = Field(default=0.1, ge=0, le=1)
    #: Runs with a budget below the video's estimate: held, suspended, resumed by the operator.
    budget_rate: float = Field(default=0.1, ge=0, le=1)
    #: Runs whose quality step waits for approval: approved, rejected or timed out at random.
    gate_rate: float = Field(default=0.15, ge=0, le=1)
    #: Runs submitted twice at once with the same idempotency key.
    double_submit_rate: float = Field(default=0.1, ge=0, le=1)
    #: Distinct prompts: fewer than runs, so repeated prompts are cache hits.
    prompts: int = Field(default=120, ge=1)
    provider_delay_s: float = Field(default=1.0, ge=0)
    provider_delay_jitter_s: float = Field(default=4.0, ge=0)
    provider_failure_rate: float = Field(default=0.25, ge=0, le=1)
    provider_duplicate_rate: float = Field(default=0.3, ge=0, le=1)
    provider_early_rate: float = Field(default=0.1, ge=0, le=1)
    provider_late_duplicate_rate: float = Field(default=0.2, ge=0, le=1)
    #: Jobs whose callback the provider never sends (lost on purpose): only polls find them.
    provider_lost_callback_rate: float = Field(default=0.15, ge=0, le=1)
    #: Register a poller for the provider (the safety net for lost callbacks).
    poll_provider: bool = True
    #: The reconciler's idle bound and how often it sweeps. Above the longest a message waits in
    #: the queue: 200 runs launched in 10 s put about 400 steps (two branches each) before 6
    #: worker slots, about 35 s of queue; with 20 s the reconciler re-published hundreds of steps
    #: that were only queued (harmless, as a superseded message is refused, but wasteful).
    stale_after_s: float = Field(default=45.0, gt=0)
    reconcile_every_s: float = Field(default=2.0, gt=0)
    #: Redis redelivers an unacknowledged message this long after delivery (a killed worker's).
    visibility_timeout_s: int = Field(default=60, ge=1)
    #: Every run must be terminal this long after it was started.
    run_bound_s: float = Field(default=180.0, gt=0)
    seed: int = 1

    @classmethod
    def scaled_down(cls, **overrides: object) -> ChaosConfig:
        """The version ``make test`` runs: 20 runs, one kill, one Redis restart."""
        values: dict[str, object] = {
            "runs": 20,
            "tenants": 3,
            "launch_s": 2.0,
            "workers": 2,
            "kill_every_s": 3.0,
            "max_kills": 1,
            "whole_worker_share": 1.0,
            "redis_restart_after_s": 5.0,
            "prompts": 12,
            "stale_after_s": 8.0,
            "visibility_timeout_s": 20,
            "run_bound_s": 90.0,
        }
        values.update(overrides)
        return cls.model_validate(values)
