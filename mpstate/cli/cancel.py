"""``mpstate cancel``: cancel a run in the store, then stop its running Celery tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mpstate.cli.celery_apps import BROKER_TIMEOUT_S
from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError
from mpstate.cli.render import make_console, print_json, run_document
from mpstate.cli.run_ids import RUN_HELP

if TYPE_CHECKING:
    from mpstate import PipelineRun

__all__ = ["cancel"]


@click.command(short_help="Cancel a run and revoke its running Celery tasks.", epilog=RUN_HELP)
@click.argument("run_id", metavar="RUN")
@click.option("--reason", required=True, help="Why; recorded as the run's error and in its log.")
@click.option(
    "--terminate",
    is_flag=True,
    help="Also kill a step task already executing (prefork workers); needs a broker URL.",
)
@click.option("--tenant", "tenant_id", metavar="T", help="The run must belong to this tenant.")
@click.pass_obj
def cancel(
    obj: CliContext, run_id: str, reason: str, terminate: bool, tenant_id: str | None
) -> None:
    """Cancel a run: status cancelled, run-cancelled logged, nothing more is enqueued.

    With a broker URL the Celery tasks of its running steps are revoked too; without one the
    output says that none was (a step task already executing then runs to its end). Cancelling
    a cancelled run changes nothing and succeeds; a completed or failed run cannot be cancelled
    (exit 1). `mpstate --json cancel` prints {"run": <run document>, "revokedTaskIds": [...]}
    (null without a broker URL).
    """
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="'--reason'")
    if terminate and not obj.broker_url:
        raise click.BadParameter(
            "needs --broker-url (or MPSTATE_BROKER_URL)", param_hint="'--terminate'"
        )
    if obj.broker_url:
        _require_celery()
    run_id = obj.find_run(run_id, tenant_id).run_id
    run = obj.store(tenant_id).cancel(run_id, reason)
    revoked = None if not obj.broker_url else _revoke(obj.broker_url, run, terminate=terminate)
    if obj.as_json:
        print_json({"run": run_document(run), "revokedTaskIds": revoked})
        return
    console = make_console()
    console.print(f"run {run.run_id!r}: status {run.status.value}, version {run.version}")
    if revoked is not None:
        console.print(f"revoked {len(revoked)} Celery task(s): {' '.join(revoked) or '-'}")
    else:
        console.print(
            "no Celery task revoked (no broker URL): to revoke the run's running step tasks, "
            "give --broker-url (or MPSTATE_BROKER_URL)",
            soft_wrap=True,
        )


def _require_celery() -> None:
    # Checked before cancelling, so a missing extra does not leave the tasks running unnoticed.
    try:
        import celery  # noqa: F401, PLC0415 - optional dependency
    except ImportError as exc:
        raise CliError(
            "revoking Celery tasks needs: pip install 'mpstate[celery]'", EXIT_USAGE
        ) from exc


def _revoke(broker_url: str, run: PipelineRun, *, terminate: bool) -> list[str]:
    """Revoke the run's running step tasks through the broker; the run is cancelled already."""
    from celery import Celery  # noqa: PLC0415 - optional dependency

    from mpstate.celery import revoke_running_steps  # noqa: PLC0415 - imports Celery

    app = Celery("mpstate-cli", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=BROKER_TIMEOUT_S,
        broker_transport_options={"max_retries": 1},
    )
    try:
        return revoke_running_steps(app, run, terminate=terminate)
    except Exception as exc:  # kombu's errors vary by transport; the message says what happened
        raise CliError(
            f"run {run.run_id!r} was cancelled, but revoking its Celery tasks failed: {exc}"
        ) from exc
    finally:
        app.close()
