"""``mpstate events``: a run's log, replayed or followed live."""

from __future__ import annotations

import click

from mpstate.cli.context import CliContext
from mpstate.cli.event_lines import event_line
from mpstate.cli.render import make_console, print_json

__all__ = ["events"]


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--since",
    "since_seq",
    metavar="N",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Only events after seq N.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive.")
@click.option(
    "--timeout",
    "timeout_s",
    metavar="S",
    type=click.FloatRange(min=0),
    help="With --follow: stop after S seconds even if the run has not ended.",
)
@click.option("--tenant", "tenant_id", metavar="T", help="The run must belong to this tenant.")
@click.pass_obj
def events(
    obj: CliContext,
    run_id: str,
    since_seq: int,
    follow: bool,
    timeout_s: float | None,
    tenant_id: str | None,
) -> None:
    """A run's events, one per line: seq, time, kind, step, details.

    --follow replays the log and then waits for new events, printing each as it is appended;
    it ends after the run's terminal event (completed, failed or cancelled) or after --timeout,
    with exit code 0 either way. `mpstate --json events` prints one JSON document per line.
    """
    if timeout_s is not None and not follow:
        raise click.BadParameter("only applies with --follow", param_hint="'--timeout'")
    store = obj.store(tenant_id)
    feed = (
        store.follow_events(run_id, since_seq, timeout_s=timeout_s)
        if follow
        else store.list_events(run_id, since_seq)
    )
    console = make_console()
    for event in feed:  # each line is flushed at once: a follower is read live
        if obj.as_json:
            print_json(event.model_dump(mode="json", by_alias=True))
        else:
            console.print(event_line(event), soft_wrap=True)
            console.file.flush()
