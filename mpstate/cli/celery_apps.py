"""The Celery app a command publishes through: ``--app`` (yours) or a bare one on
``--broker-url``, and the ``MpState`` bound to it. Shared by ``mpstate webhooks serve``,
``mpstate reconcile`` and ``mpstate runs rerun``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from celery import Celery

    from mpstate.celery import MpState

__all__ = ["BROKER_TIMEOUT_S", "app_option", "bound_mpstate", "celery_app_for", "publishing_app"]

#: Seconds a command waits for an unreachable broker (``--broker-url``) before giving up on it.
BROKER_TIMEOUT_S = 2.0

#: ``--app``: your Celery app, as ``celery -A`` takes it.
app_option = click.option(
    "--app",
    "app_path",
    envvar="MPSTATE_CELERY_APP",
    show_envvar=True,
    help="Your Celery app (module or module:attribute), e.g. celery_app.",
)


def celery_app_for(obj: CliContext, app_path: str | None, bare_name: str, needs: str) -> Celery:
    """``--app`` loaded, else a bare app named ``bare_name`` on ``--broker-url``.

    ``needs`` names the extra to install when Celery is missing (``celery`` or ``web``). An
    ``--app`` that cannot be imported, or is not a Celery app, is a usage error (exit 2).
    """
    try:
        from celery import Celery  # noqa: PLC0415 - an optional extra
        from celery.app.utils import find_app  # noqa: PLC0415
    except ImportError as exc:
        raise CliError(f"this command needs: pip install 'mpstate[{needs}]'", EXIT_USAGE) from exc
    if app_path:
        try:
            found = find_app(app_path)
        except Exception as exc:  # also what the module itself raises on import: one line
            raise CliError(
                f"cannot load --app {app_path!r}: {_why(exc, app_path)}", EXIT_USAGE
            ) from exc
        if not isinstance(found, Celery):
            raise CliError(
                f"--app {app_path!r} is not a Celery app (type {type(found).__name__})", EXIT_USAGE
            )
        return found
    if obj.broker_url:
        return Celery(bare_name, broker=obj.broker_url, set_as_current=False)
    raise CliError("give --app or --broker-url (MPSTATE_BROKER_URL)", EXIT_USAGE)


def _why(exc: Exception, app_path: str) -> str:
    module, colon, attribute = app_path.partition(":")
    if isinstance(exc, AttributeError) and not colon:
        # find_app looked for ``app``, ``celery`` and any Celery instance in the module
        return f"no Celery app in it ({exc}); name it as module:attribute"
    if isinstance(exc, ModuleNotFoundError) and exc.name == app_path and colon:
        # find_app retries a missing attribute as a module named like the whole path
        return f"module {module!r} has no attribute {attribute!r}"
    return f"{type(exc).__name__}: {exc}"


def publishing_app(obj: CliContext, app_path: str | None, bare_name: str) -> Celery:
    """``celery_app_for`` for a command that publishes steps: a bare app reports a dead broker
    in seconds, not after kombu's long retries (your ``--app`` keeps its own settings)."""
    app = celery_app_for(obj, app_path, bare_name, needs="celery")
    if not app_path:
        app.conf.update(
            broker_connection_timeout=BROKER_TIMEOUT_S,
            mpstate_publish_retry_policy={"max_retries": 1, "interval_start": 0.2},
        )
    return app


@contextmanager
def bound_mpstate(app: Celery, obj: CliContext) -> Iterator[MpState]:
    """The app's own ``MpState``, or one bound here to the CLI's store and closed afterwards."""
    from mpstate.celery import MpState  # noqa: PLC0415 - imports Celery
    from mpstate.errors import MpStateError  # noqa: PLC0415

    try:
        own: MpState | None = MpState.of(app)
    except MpStateError:
        own = None
    if own is not None:
        yield own
        return
    mp = MpState(app, obj.store())
    try:
        yield mp
    finally:
        mp.close()
