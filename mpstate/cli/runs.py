"""``mpstate runs list`` and ``mpstate runs show``: find runs, and look inside one."""

from __future__ import annotations

from datetime import datetime

import click

from mpstate import PipelineRunStatus
from mpstate.cli.context import CliContext
from mpstate.cli.params import WHEN
from mpstate.cli.render import make_console, print_json, run_detail, run_document, runs_table
from mpstate.cli.rerun import rerun
from mpstate.filters import MAX_PAGE_SIZE

__all__ = ["runs"]

TENANT_HELP = "Only this tenant's runs."


@click.group()
def runs() -> None:
    """List runs, show one run and its steps, or re-run one."""


runs.add_command(rerun)


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
@click.pass_obj
def list_runs(
    obj: CliContext,
    tenant_id: str | None,
    statuses: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> None:
    """Runs, oldest first (by creation time, then run id).

    `mpstate --json runs list` prints one JSON array of run documents (without their logs).
    """
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="'--since'")
    found = obj.store(tenant_id).list_runs(
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
        make_console().print("no runs match", style="dim")


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
