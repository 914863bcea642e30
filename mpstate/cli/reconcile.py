"""``mpstate reconcile``: one reconciler pass from the command line (cron, or by hand).

It needs the Celery app that runs the steps, to re-enqueue them: ``--app`` loads yours (its
``MpState`` is used if it binds one); with only ``--broker-url`` a bare app publishes by task
name, and a step's retry limit is Celery's default unless the step sets ``maxRetries``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from mpstate.cli.celery_apps import app_option, bound_mpstate, publishing_app
from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import CliError
from mpstate.cli.params import DURATION
from mpstate.cli.render import make_console, print_json

if TYPE_CHECKING:
    from mpstate.celery import ReconcileReport

__all__ = ["reconcile"]


@click.command(short_help="Re-enqueue or fail steps stalled by a lost worker.")
@click.option(
    "--stale-after",
    type=DURATION,
    required=True,
    help="Idle time (e.g. 10m) after which a pending or running step counts as lost; "
    "longer than your slowest step.",
)
@click.option(
    "--policy",
    type=click.Choice(["requeue", "fail"]),
    default="requeue",
    show_default=True,
    help="requeue: enqueue the step again within its retry limit; fail: fail the run.",
)
@click.option("--dry-run", is_flag=True, help="Only list what is stalled.")
@app_option
@click.pass_obj
def reconcile(
    obj: CliContext, stale_after: float, policy: str, dry_run: bool, app_path: str | None
) -> None:
    """Find running runs whose current step has been idle for --stale-after, and repair them.

    A running step whose worker died is logged step-failed worker-lost and enqueued again (or
    the run fails, with --policy fail or when its retries are spent); a pending step that was
    never enqueued is enqueued. `mpstate --json reconcile` prints the report as JSON.
    """
    app = publishing_app(obj, app_path, "mpstate-reconciler")
    with bound_mpstate(app, obj) as mp:
        report = mp.reconcile(stale_after_s=stale_after, policy=policy, dry_run=dry_run)
    if obj.as_json:
        print_json(_report_document(report, dry_run))
    else:
        _print_report(report, dry_run)
    if report.unpublished:
        raise CliError(
            f"{len(report.unpublished)} repaired step(s) were not published: the broker is "
            "unreachable (a later pass enqueues them)"
        )


def _report_document(report: ReconcileReport, dry_run: bool) -> dict[str, Any]:
    def steps(items: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "runId": s.run_id,
                "stepId": s.step_id,
                "status": s.status.value,
                "idleS": s.idle_s,
                "tenantId": s.tenant_id,
            }
            for s in items
        ]

    def waits(items: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "runId": w.run.run_id,
                "stepId": w.step.step_id,
                "provider": w.job.provider,
                "jobId": w.job.job_id,
                "deadline": w.job.deadline.isoformat() if w.job.deadline else None,
            }
            for w in items
        ]

    return {
        "dryRun": dry_run,
        "stalled": steps(report.stalled),
        "requeued": steps(report.requeued),
        "failed": steps(report.failed),
        "skipped": steps(report.skipped),
        "unpublished": steps(report.unpublished),
        "expired": waits(report.expired),
        "repolled": waits(report.repolled),
        "timedOut": [
            {
                "runId": gate.run_id,
                "stepId": gate.step_id,
                "gateType": gate.gate_type,
                "onTimeout": str(gate.on_timeout),
            }
            for gate in report.timed_out
        ],
    }


def _print_report(report: ReconcileReport, dry_run: bool) -> None:
    console = make_console()
    verb = "would be" if dry_run else "were"
    for wait in report.expired:
        console.print(
            f"run {wait.run.run_id} step {wait.step.step_id}: no answer from "
            f"{wait.job.provider} for job {wait.job.job_id} by its deadline: {verb} failed "
            "with external-timeout"
        )
    for wait in report.repolled:
        console.print(
            f"run {wait.run.run_id} step {wait.step.step_id}: polls of {wait.job.provider} "
            f"went quiet: a poll {verb} published"
        )
    for gate in report.timed_out:
        decided = "approved" if gate.on_timeout == "approve" else "rejected"
        console.print(
            f"run {gate.run_id} step {gate.step_id}: gate {gate.gate_type} had no verdict by "
            f"its deadline: {verb} {decided}"
        )
    if not report.stalled:
        console.print("nothing stalled")
        return
    action = {id(s): "requeued" for s in report.requeued}
    action |= {id(s): "failed" for s in report.failed}
    action |= {id(s): "skipped (changed meanwhile)" for s in report.skipped}
    action |= {id(s): "repaired, not published" for s in report.unpublished}
    table = Table("run", "step", "status", "idle", "action", box=None)
    for stalled in report.stalled:
        table.add_row(
            stalled.run_id,
            stalled.step_id,
            stalled.status.value,
            f"{stalled.idle_s:.0f} s",
            "none (dry run)" if dry_run else action.get(id(stalled), "-"),
        )
    console.print(table)
    console.print(
        f"{len(report.stalled)} stalled: {len(report.requeued)} requeued, "
        f"{len(report.failed)} failed, {len(report.skipped)} skipped"
    )
