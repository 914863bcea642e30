"""The ``mpstate`` command group: global options, and how errors become one line and a code.

Subcommands live in their own modules and are registered at the bottom with one
``cli.add_command(...)`` each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from mpstate import MpStateError
from mpstate.cli.cancel import cancel
from mpstate.cli.context import CliContext
from mpstate.cli.dashboard import dashboard
from mpstate.cli.events import events
from mpstate.cli.exit_codes import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    from_mpstate_error,
    from_redis_error,
)
from mpstate.cli.metrics import metrics
from mpstate.cli.reconcile import reconcile
from mpstate.cli.runs import runs
from mpstate.cli.webhooks import webhooks

__all__ = ["MpStateGroup", "cli"]


def _one_line(message: str) -> str:
    # Store messages can carry pydantic's multi-line detail; the contract is one line.
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


class MpStateGroup(click.Group):
    """A group that reports every error as ``error: ...`` on stderr with its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MpStateError as exc:
            obj = ctx.find_object(CliContext)
            raise from_mpstate_error(exc, obj.redis_url if obj else "?") from exc
        except Exception as exc:
            # redis-py errors the store does not translate (a server that is not Redis, a
            # database it does not have); any other exception is a bug and propagates.
            obj = ctx.find_object(CliContext)
            error = from_redis_error(exc, obj.redis_url if obj else "?")
            if error is None:
                raise
            raise error from exc

    # click types ``main`` as overloads (NoReturn when standalone); this one returns the code.
    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        """Run the CLI; exit with its code (``standalone_mode``) or return it."""
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else EXIT_OK
        except click.ClickException as exc:
            message = _one_line(exc.format_message())
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"error: {message}", err=True)
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt):  # Ctrl-C: no traceback, no "Aborted!"
            code = EXIT_INTERRUPTED
        if standalone_mode:
            raise SystemExit(code)
        return code


@click.group("mpstate", cls=MpStateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpstate", prog_name="mpstate")
@click.option(
    "--redis-url",
    envvar="MPSTATE_REDIS_URL",
    default="redis://localhost:6379/0",
    show_default=True,
    show_envvar=True,
    help="The Redis holding the run state.",
)
@click.option(
    "--prefix",
    envvar="MPSTATE_PREFIX",
    default="mp",
    show_default=True,
    show_envvar=True,
    help="Key prefix of the store.",
)
@click.option(
    "--flower-url",
    envvar="MPSTATE_FLOWER_URL",
    show_envvar=True,
    help="Flower's base URL; `runs show` then links steps to their tasks.",
)
@click.option(
    "--broker-url",
    envvar="MPSTATE_BROKER_URL",
    show_envvar=True,
    help="The Celery broker; `cancel` then revokes the run's running tasks, `reconcile` "
    "re-enqueues through it.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine output: JSON on stdout.")
@click.pass_context
def cli(
    ctx: click.Context,
    redis_url: str,
    prefix: str,
    flower_url: str | None,
    broker_url: str | None,
    as_json: bool,
) -> None:
    """Inspect and operate mpstate pipeline runs.

    \b
    Exit codes:
      0  ok
      1  another mpstate error (e.g. cancelling a completed run)
      2  usage error or refused input (bad run id, bad --since, bad --app,
         malformed --redis-url or a database the server does not have)
      3  run not found
      4  Redis unreachable, or not Redis at --redis-url
      124  events --follow: --timeout passed before the run ended
      130  interrupted (Ctrl-C)
    Errors are one line on stderr, also with --json.
    """
    obj = CliContext(
        redis_url=redis_url,
        prefix=prefix,
        flower_url=flower_url or None,
        broker_url=broker_url or None,
        as_json=as_json,
    )
    ctx.obj = obj
    ctx.call_on_close(obj.close)


cli.add_command(runs)
cli.add_command(events)
cli.add_command(cancel)
cli.add_command(reconcile)
cli.add_command(webhooks)
cli.add_command(dashboard)
cli.add_command(metrics)
