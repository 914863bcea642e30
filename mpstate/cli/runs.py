"""``mpstate runs list`` and ``mpstate runs show``: find runs, and look inside one."""

from __future__ import annotations

from datetime import datetime

import click

from mpstate import PipelineRun, PipelineRunStatus, PipelineStateStore, SuspendReason
from mpstate.cli.context import CliContext
from mpstate.cli.params import WHEN
from mpstate.cli.render import make_console, print_json, run_detail, run_document, runs_table
from mpstate.cli.rerun import rerun
from mpstate.cli.suspensions import approve, reject, resume
from mpstate.filters import MAX_PAGE_SIZE

__all__ = ["runs"]

TENANT_HELP = "Only this tenant's runs."


@click.group()
def runs() -> None:
    """List runs, show one run and its steps, re-run one, or answer a suspended one."""


runs.add_command(rerun)
runs.add_command(resume)
runs.add_command(approve)
runs.add_command(reject)


@runs.command("list")
@click.option("--tenant", "tenant_id", metavar="T", help=TENANT_HELP)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in PipelineRunStatus], case_sensitive=False),
    help="Only runs in this status; repeat for any of several.",
)
@click.option("--since", type=WHEN, help="Created at or after WHEN: ISO-8601, or 30m, 2h, 7d ago.")
@click.option("--until", type=WHEN, help="Created at or before WHEN (same forms as --since).")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=50,
    show_default=True,
    help="At most this many runs.",
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Skip this many."
)
@click.option(
    "--reason",
    type=click.Choice([r.value for r in SuspendReason], case_sensitive=False),
    help="Only suspended runs waiting for this (implies --status suspended).",
)
@click.pass_obj
def list_runs(
    obj: CliContext,
    tenant_id: str | None,
    statuses: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
    reason: str | None,
) -> None:
    """Runs, oldest first (by creation time, then run id).

    `mpstate --json runs list` prints one JSON array of run documents (without their logs).
    """
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="'--since'")
    store = obj.store(tenant_id)
    if reason is not None:
        if statuses and {s.lower() for s in statuses} != {"suspended"}:
            raise click.BadParameter("--reason lists suspended runs only", param_hint="'--reason'")
        found = _suspended_for(store, SuspendReason(reason.lower()), since, until)
        found = found[offset : offset + limit]
    else:
        found = store.list_runs(
            status=[s.lower() for s in statuses] or None,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
    if obj.as_json:
        print_json([run_document(run) for run in found])
    elif found:
        make_console().print(runs_table(found))
    else:
        make_console().print(f"no runs match in {obj.where()}", style="dim", soft_wrap=True)


def _suspended_for(
    store: PipelineStateStore,
    reason: SuspendReason,
    since: datetime | None,
    until: datetime | None,
) -> list[PipelineRun]:
    """Every suspended run waiting for ``reason`` (the store indexes status, not reasons: the
    suspended runs are read page by page and filtered)."""
    found: list[PipelineRun] = []
    offset = 0
    while True:
        page = store.list_runs(
            status="suspended", since=since, until=until, limit=MAX_PAGE_SIZE, offset=offset
        )
        found.extend(run for run in page if run.suspend_reason is reason)
        if len(page) < MAX_PAGE_SIZE:
            return found
        offset += MAX_PAGE_SIZE


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@click.option("--tenant", "tenant_id", metavar="T", help="The run must belong to this tenant.")
@click.pass_obj
def show_run(obj: CliContext, run_id: str, tenant_id: str | None) -> None:
    """One run: status, cost, timestamps, error, and each step with its Celery task.

    With a Flower URL, each step links to its task in Flower and the run to a search for all of
    its tasks. `mpstate --json runs show` prints the run document without its log (read that
    with `events`).
    """
    run = obj.store(tenant_id).require(run_id, include_events=False)
    if obj.as_json:
        print_json(run_document(run))
        return
    console = make_console()
    for part in run_detail(run, obj.flower_url):
        console.print(part)
