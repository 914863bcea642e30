"""``mpstate runs rerun``: re-drive a failed or cancelled run as a new run."""

from __future__ import annotations

import click

from mpstate import MpStateError
from mpstate.cli.celery_apps import app_option, bound_mpstate, publishing_app
from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import CliError
from mpstate.cli.render import make_console, print_json, run_document
from mpstate.cli.run_ids import RUN_HELP

__all__ = ["rerun"]


@click.command(short_help="Re-run a failed or cancelled run from a step.", epilog=RUN_HELP)
@click.argument("run_id", metavar="RUN")
@click.option(
    "--from",
    "from_step",
    metavar="STEP",
    help="Run this step and every step after it again (default: the first that did not succeed).",
)
@click.option("--reason", default="", help="Why; recorded on the new run's run-started.")
@click.option("--tenant", "tenant_id", metavar="T", help="The run must belong to this tenant.")
@app_option
@click.pass_obj
def rerun(
    obj: CliContext,
    run_id: str,
    from_step: str | None,
    reason: str,
    tenant_id: str | None,
    app_path: str | None,
) -> None:
    """Start a new run that re-runs RUN (failed, cancelled or gated) and print it.

    The new run carries over the steps that succeeded and do not depend on --from (logged as
    step-cached, cost 0) and publishes the rest; RUN stays as it is, linked to the new run.
    It needs the Celery app that runs the steps (--app, or --broker-url to publish by task name).
    Running it again while the re-run is live prints that re-run. `mpstate --json runs rerun`
    prints the new run's document.
    """
    run_id = obj.find_run(run_id, tenant_id).run_id  # the tenant check, and exit 3
    app = publishing_app(obj, app_path, "mpstate-rerun")
    with bound_mpstate(app, obj) as mp:
        try:
            new = mp.rerun(run_id, from_step=from_step, reason=reason)
        except MpStateError:
            raise
        except Exception as exc:  # kombu's errors vary by transport
            reruns = obj.store().require(run_id, include_events=False).reruns
            created = repr(reruns[-1]) if reruns else "the re-run"
            raise CliError(
                f"run {created} re-runs {run_id!r}, but publishing its first steps failed "
                f"({exc}): `mpstate reconcile` publishes them once the broker is back"
            ) from exc
    if obj.as_json:
        print_json(run_document(new))
        return
    cached = [step.step_id for step in new.steps if step.cache_key is not None]
    console = make_console()
    console.print(f"run {new.run_id!r} re-runs {run_id!r}: status {new.status.value}")
    console.print(f"carried over: {', '.join(cached) or '-'}")
