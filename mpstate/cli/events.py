"""``mpstate events``: a run's log, replayed or followed live."""

from __future__ import annotations

import math
from datetime import datetime

import click

from mpstate.cli.context import CliContext
from mpstate.cli.event_lines import event_line
from mpstate.cli.exit_codes import EXIT_TIMEOUT, CliError
from mpstate.cli.params import SEQ_OR_WHEN
from mpstate.cli.render import make_console, print_json
from mpstate.cli.run_ids import RUN_HELP
from mpstate.events import TERMINAL_EVENT_KINDS

__all__ = ["events"]


@click.command(epilog=RUN_HELP)
@click.argument("run_id", metavar="RUN")
@click.option(
    "--since",
    metavar="N|WHEN",
    type=SEQ_OR_WHEN,
    default=0,
    show_default=True,
    help="Only events after seq N (a bare number), or at or after WHEN: ISO-8601, or 30m, 2h, "
    "7d ago.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they arrive.")
@click.option(
    "--timeout",
    "timeout_s",
    metavar="S",
    type=click.FloatRange(min=0),
    help="With --follow: stop after S seconds even if the run has not ended (exit 124).",
)
@click.option("--tenant", "tenant_id", metavar="T", help="The run must belong to this tenant.")
@click.pass_obj
def events(
    obj: CliContext,
    run_id: str,
    since: int | datetime,
    follow: bool,
    timeout_s: float | None,
    tenant_id: str | None,
) -> None:
    """A run's events, one per line: seq, time, kind, step, details.

    --since N skips the events up to seq N (the last one already seen); --since WHEN (2h, or
    an ISO-8601 time, naive meaning UTC) skips the events recorded before that moment.

    --follow replays the log and then waits for new events, printing each as it is appended;
    it ends after the run's terminal event (completed, failed or cancelled) with exit code 0,
    or when --timeout passes first with exit code 124. `mpstate --json events` prints one JSON
    document per line.
    """
    if timeout_s is not None and not follow:
        raise click.BadParameter("only applies with --follow", param_hint="'--timeout'")
    since_seq, since_ms = (since, None) if isinstance(since, int) else (0, _epoch_ms(since))
    run_id = obj.find_run(run_id, tenant_id).run_id
    store = obj.store(tenant_id)
    feed = (
        store.follow_events(run_id, since_seq, timeout_s=timeout_s)
        if follow
        else store.list_events(run_id, since_seq)
    )
    console = make_console()
    ended = False
    for event in feed:  # each line is flushed at once: a follower is read live
        ended = ended or event.kind in TERMINAL_EVENT_KINDS
        if since_ms is not None and event.at < since_ms:
            continue
        if obj.as_json:
            print_json(event.model_dump(mode="json", by_alias=True))
        else:
            console.print(event_line(event), soft_wrap=True)
            console.file.flush()
    if follow and timeout_s is not None and not ended:
        raise CliError(
            f"run {run_id!r} had not ended when --timeout {timeout_s:g}s passed", EXIT_TIMEOUT
        )


def _epoch_ms(moment: datetime) -> int:
    # Event times are whole milliseconds: an event in WHEN's millisecond counts as at WHEN.
    return max(0, math.floor(moment.timestamp() * 1000))
