"""``mpstate runs resume``, ``runs approve`` and ``runs reject``: answer a suspended run.

Each reads the resume token from the run itself (operators never copy tokens around) and applies
it through the run's ``MpState``, which publishes the steps the answer lets start: so, like
``runs rerun``, they need the Celery app (``--app``, or ``--broker-url`` to publish by task name).
A token used meanwhile by another operator is refused (exit 1) and changes nothing.
"""

from __future__ import annotations

import getpass

import click

from mpstate import MpStateError, PipelineRun, StepStatus, SuspendReason
from mpstate.budget import MAX_USD, max_usd
from mpstate.cli.celery_apps import app_option, bound_mpstate, publishing_app
from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError
from mpstate.cli.render import make_console, print_json, run_document
from mpstate.cli.run_ids import RUN_HELP

__all__ = ["approve", "reject", "resume"]

_TENANT_HELP = "The run must belong to this tenant."
_BY_HELP = "Who answers; recorded in the event's meta (default: your login name)."


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment (a container)
        return "cli"


def _report(obj: CliContext, run: PipelineRun, what: str) -> None:
    if obj.as_json:
        print_json(run_document(run))
        return
    console = make_console()
    console.print(f"run {run.run_id!r} {what}: status {run.status.value}")
    if run.suspend_reason is not None:
        console.print(f"suspended again: waits for {run.suspend_reason.value}")


def _published_failure(run_id: str, exc: Exception) -> CliError:
    return CliError(
        f"run {run_id!r} was answered, but publishing its next steps failed ({exc}): "
        "`mpstate reconcile` publishes them once the broker is back"
    )


@click.command(
    short_help="Resume a run its budget suspended, optionally raising the budget.",
    epilog=RUN_HELP,
)
@click.argument("run_id", metavar="RUN")
@click.option(
    "--raise-budget",
    "new_max",
    type=click.FloatRange(min=0, min_open=True),
    metavar="USD",
    help="The run's new maxUsd (above the current one).",
)
@click.option("--by", help=_BY_HELP)
@click.option("--tenant", "tenant_id", metavar="T", help=_TENANT_HELP)
@app_option
@click.pass_obj
def resume(
    obj: CliContext,
    run_id: str,
    new_max: float | None,
    by: str | None,
    tenant_id: str | None,
    app_path: str | None,
) -> None:
    """Start RUN's held steps again, as far as its budget (raised to --raise-budget) allows.

    Exit 1 when the run is not suspended for its budget, or the budget still stops every held
    step (raise it); nothing changes then.
    """
    run = obj.find_run(run_id, tenant_id)
    run_id = run.run_id
    if run.suspend_reason is not SuspendReason.BUDGET or not run.resume_token:
        raise CliError(f"run {run_id!r} is {_waiting_for(run)}: nothing to resume")
    current = max_usd(run.budget)
    if new_max is not None and current is not None and new_max <= current:
        raise CliError(
            f"--raise-budget {new_max} is not above the run's maxUsd {current}", EXIT_USAGE
        )
    budget = None if new_max is None else {MAX_USD: new_max}
    app = publishing_app(obj, app_path, "mpstate-resume")
    with bound_mpstate(app, obj) as mp:
        try:
            resumed = mp.resume(run_id, run.resume_token, budget=budget, by=by or _login())
        except MpStateError:
            raise
        except Exception as exc:  # kombu's errors vary by transport
            raise _published_failure(run_id, exc) from exc
    _report(obj, resumed, "resumed")


def _waiting_for(run: PipelineRun) -> str:
    if run.suspend_reason is None:
        return str(run.status.value)
    return f"suspended for {run.suspend_reason.value}"


def _gate_token(run: PipelineRun, step_id: str | None) -> str:
    """The token of the step waiting for a verdict: --step's, else the only one's."""
    waiting = [
        step
        for step in run.steps
        if step.approval is not None and step.status is StepStatus.WAITING
    ]
    if step_id is not None:
        waiting = [step for step in waiting if step.step_id == step_id]
        if not waiting:
            raise CliError(f"step {step_id!r} of run {run.run_id!r} waits for no verdict")
    if not waiting:
        raise CliError(f"run {run.run_id!r} has no step waiting for a verdict")
    if len(waiting) > 1:
        names = ", ".join(step.step_id for step in waiting)
        raise CliError(f"several steps wait for a verdict ({names}): give --step", EXIT_USAGE)
    approval = waiting[0].approval
    assert approval is not None
    return approval.token


def _verdict_command(approved: bool) -> click.Command:
    verb = "approve" if approved else "reject"

    @click.command(
        verb,
        short_help=f"{verb.capitalize()} the step of a run that waits for a person's verdict.",
        epilog=RUN_HELP,
    )
    @click.argument("run_id", metavar="RUN")
    @click.option("--step", "step_id", metavar="STEP", help="The step, if several wait.")
    @click.option("--note", help="Why; recorded in the step-gated event's meta.")
    @click.option("--by", help=_BY_HELP)
    @click.option("--tenant", "tenant_id", metavar="T", help=_TENANT_HELP)
    @app_option
    @click.pass_obj
    def command(
        obj: CliContext,
        run_id: str,
        step_id: str | None,
        note: str | None,
        by: str | None,
        tenant_id: str | None,
        app_path: str | None,
    ) -> None:
        run = obj.find_run(run_id, tenant_id)
        run_id = run.run_id
        token = _gate_token(run, step_id)
        app = publishing_app(obj, app_path, f"mpstate-{verb}")
        with bound_mpstate(app, obj) as mp:
            answer = mp.approve if approved else mp.reject
            try:
                decided = answer(run_id, token, by=by or _login(), note=note)
            except MpStateError:
                raise
            except Exception as exc:  # kombu's errors vary by transport
                raise _published_failure(run_id, exc) from exc
        _report(obj, decided, "approved" if approved else "rejected")

    command.help = (
        f"{verb.capitalize()} what RUN's gated step produced"
        + (
            ": the step completes with it and the run goes on."
            if approved
            else ": the run fails with gate-rejected."
        )
        + "\n\nExit 1 when no step waits for a verdict, or another operator answered first."
    )
    return command


approve = _verdict_command(approved=True)
reject = _verdict_command(approved=False)
