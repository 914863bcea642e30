"""``mpstate runs list`` and ``mpstate runs show``: find runs, and look inside one."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Any

import click
from click.core import ParameterSource

from mpstate import PipelineRun, PipelineRunStatus, PipelineStateStore, SuspendReason
from mpstate.cli.context import CliContext
from mpstate.cli.params import WHEN
from mpstate.cli.render import (
    left_out,
    make_console,
    print_json,
    run_detail,
    run_document,
    runs_table,
)
from mpstate.cli.rerun import rerun
from mpstate.cli.run_ids import RUN_HELP
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
@click.option("--oldest-first", is_flag=True, help="Oldest runs first (and --offset from them).")
@click.pass_context
def list_runs(
    ctx: click.Context,
    tenant_id: str | None,
    statuses: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
    reason: str | None,
    oldest_first: bool,
) -> None:
    """Runs, newest first (by creation time, then run id), or oldest first with --oldest-first.

    When more runs match than --limit shows, a last line gives the command for the next page.
    Ids stay whole at any terminal width: the columns that do not fit are left out, and a line
    names them. `mpstate --json runs list` prints one JSON array of run documents (without
    their logs).
    """
    obj: CliContext = ctx.obj
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="'--since'")
    store = obj.store(tenant_id)
    newest_first = not oldest_first
    if reason is not None:
        if statuses and {s.lower() for s in statuses} != {"suspended"}:
            raise click.BadParameter("--reason lists suspended runs only", param_hint="'--reason'")
        waiting = _suspended_for(store, SuspendReason(reason.lower()), since, until, newest_first)
        found = waiting[offset : offset + limit + 1]
    else:
        found = _page_and_one(
            store,
            limit,
            offset,
            status=[s.lower() for s in statuses] or None,
            since=since,
            until=until,
            newest_first=newest_first,
        )
    more, found = len(found) > limit, found[:limit]
    if obj.as_json:
        print_json([run_document(run) for run in found])
        return
    console = make_console()
    if not found:
        console.print(f"no runs match in {obj.where()}", style="dim", soft_wrap=True)
        return
    fitted = runs_table(found, console.width)
    console.print(fitted.table)
    note = left_out(fitted, console.width)
    if note is not None:
        console.print(note, soft_wrap=True)
    if more:
        console.print(f"more runs: {_next_page(ctx, offset + limit)}", style="dim", soft_wrap=True)


def _page_and_one(
    store: PipelineStateStore, limit: int, offset: int, **selection: Any
) -> list[PipelineRun]:
    """The page, and the run after it if there is one: it says that more runs match."""
    page = store.list_runs(limit=min(limit + 1, MAX_PAGE_SIZE), offset=offset, **selection)
    if len(page) == limit == MAX_PAGE_SIZE:  # the store's largest page: ask for the next run
        page += store.list_runs(limit=1, offset=offset + limit, **selection)
    return page


def _next_page(ctx: click.Context, offset: int) -> str:
    """The ``runs list`` command for the next page: the options given, then ``--offset``."""
    words = ["mpstate", "runs", "list"]
    for param in ctx.command.params:
        name = param.name
        if not isinstance(param, click.Option) or name in (None, "offset"):
            continue
        if ctx.get_parameter_source(name) in (
            None,
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
        ):
            continue
        value = ctx.params[name]
        for item in value if param.multiple else (value,):
            if param.is_flag:
                words.extend([param.opts[0]] if item else [])
            elif isinstance(item, datetime):  # a WHEN such as 2h, pinned so pages do not shift
                words.extend([param.opts[0], item.isoformat().replace("+00:00", "Z")])
            else:
                words.extend([param.opts[0], str(item)])
    return shlex.join([*words, "--offset", str(offset)])


def _suspended_for(
    store: PipelineStateStore,
    reason: SuspendReason,
    since: datetime | None,
    until: datetime | None,
    newest_first: bool,
) -> list[PipelineRun]:
    """Every suspended run waiting for ``reason``, in the listing's order (the store indexes
    status, not reasons: the suspended runs are read page by page and filtered)."""
    found: list[PipelineRun] = []
    offset = 0
    while True:
        page = store.list_runs(
            status="suspended",
            since=since,
            until=until,
            newest_first=newest_first,
            limit=MAX_PAGE_SIZE,
            offset=offset,
        )
        found.extend(run for run in page if run.suspend_reason is reason)
        if len(page) < MAX_PAGE_SIZE:
            return found
        offset += MAX_PAGE_SIZE


@runs.command("show", epilog=RUN_HELP)
@click.argument("run_id", metavar="RUN")
@click.option("--tenant", "tenant_id", metavar="T", help="The run must belong to this tenant.")
@click.pass_obj
def show_run(obj: CliContext, run_id: str, tenant_id: str | None) -> None:
    """One run: status, cost, timestamps, error, and each step with its Celery task.

    With a Flower URL, each step links to its task in Flower and the run to a search for all of
    its tasks. The run and task ids stay whole at any terminal width: the step columns that do
    not fit are left out (the steps' errors then follow the table). `mpstate --json runs show`
    prints the run document without its log (read that with `events`).
    """
    run = obj.find_run(run_id, tenant_id)
    if obj.as_json:
        print_json(run_document(run))
        return
    console = make_console()
    for part in run_detail(run, obj.flower_url, console.width):
        console.print(part)
