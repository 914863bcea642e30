"""The store on its own, runnable: ``python examples/quickstart.py [--redis URL]``.

It creates a one-step run, logs its life as events, makes versioned updates, replays the log from
a seq, queries a tenant's runs and cancels a second run. Exits 0 when everything behaved as the
contract says.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from mpstate import (
    InMemoryPipelineStateStore,
    PipelineRun,
    PipelineStateStore,
    RedisPipelineStateStore,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepStarted,
    StepState,
    StepStatus,
    VersionConflictError,
)


def quickstart(store: PipelineStateStore) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"

    # 1. Create a run with one step: stored at version 1, with run-created as event 1.
    run = store.create(
        PipelineRun(
            run_id=run_id,
            pipeline_id="product-photo",
            tenant_id="acme",
            steps=[
                StepState(
                    step_id="generate",
                    operation="image.generate",
                    inputs={"prompt": "a red bicycle"},
                )
            ],
        )
    )
    print(f"created {run.run_id} (version {run.version}, status {run.status})")

    # 2. Start it: the status change and its event commit together, guarded by the version.
    result = store.commit(
        run_id, {"status": "running"}, [RunStarted(run_id=run_id)], expected_version=run.version
    )
    run = result.run
    store.append_event(run_id, StepStarted(run_id=run_id, step_id="generate", attempt=0))

    # 3. A versioned update: a writer holding an old version is refused and writes nothing.
    try:
        store.update(run_id, {"costUsd": 99.0}, expected_version=1)
    except VersionConflictError as exc:
        print(f"refused a stale write: {exc}")

    # 4. Finish the step and the run, each as one atomic commit.
    # model_copy does not validate: give it the enum, not the string "completed".
    step = run.steps[0].model_copy(
        update={"status": StepStatus.COMPLETED, "artifact_ids": ["img-1"], "cost_usd": 0.04}
    )
    run = store.commit(
        run_id,
        {"steps": [step], "costUsd": 0.04, "currentStepIndex": 1},
        [StepCompleted(run_id=run_id, step_id="generate", artifact_ids=["img-1"], cost_usd=0.04)],
        expected_version=run.version,
    ).run
    run = store.commit(
        run_id,
        {"status": "completed", "completedAt": run.updated_at},
        [RunCompleted(run_id=run_id, total_cost_usd=run.cost_usd)],
        expected_version=run.version,
    ).run
    print(f"{run_id} is {run.status} at version {run.version}, cost ${run.cost_usd:.2f}")

    # 5. Replay the log from a seq (what a consumer that saw events 1-2 does).
    for event in store.list_events(run_id, since_seq=2):
        print(f"  event {event.seq}: {event.kind}")

    # 6. A tenant query through a tenant-scoped view.
    acme = store.for_tenant("acme")
    completed = acme.list_runs(status="completed", limit=50)
    print(f"tenant acme has {len(completed)} completed run(s) on this page")

    # 7. Cancel another run: cancelled, with run-cancelled in its log; cancelling again is a no-op.
    other = acme.create({"runId": f"{run_id}-b", "pipelineId": "product-photo"})
    cancelled = acme.cancel(other.run_id, "customer changed their mind")
    again = acme.cancel(other.run_id, "customer changed their mind")
    last = acme.list_events(other.run_id)[-1]
    print(f"{other.run_id} is {cancelled.status} (version {again.version}); last event {last.kind}")

    assert run.status == "completed" and run.version == 4
    assert [e.seq for e in store.list_events(run_id)] == [1, 2, 3, 4, 5]
    assert cancelled.version == again.version == 2 and last.kind == "run-cancelled"
    assert any(r.run_id == run_id for r in completed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", metavar="URL", help="run on this Redis instead of in memory")
    args = parser.parse_args(argv)
    if args.redis:
        store: PipelineStateStore = RedisPipelineStateStore.from_url(
            args.redis, prefix="mpstate-quickstart"
        )
        print(f"store: Redis at {args.redis} (keys under mpstate-quickstart:)")
    else:
        store = InMemoryPipelineStateStore()
        print("store: in memory")
    quickstart(store)
    print("quick start finished: every step behaved as documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
