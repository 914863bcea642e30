"""The Celery app a command publishes through: ``--app`` (yours) or a bare one on
``--broker-url``. Shared by ``mpstate webhooks serve`` and ``mpstate reconcile``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["app_option", "celery_app_for"]

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

    ``needs`` names the extra to install when Celery is missing (``celery`` or ``web``).
    """
    try:
        from celery import Celery  # noqa: PLC0415 - an optional extra
        from celery.app.utils import find_app  # noqa: PLC0415
    except ImportError as exc:
        raise CliError(f"this command needs: pip install 'mpstate[{needs}]'", EXIT_USAGE) from exc
    if app_path:
        app: Celery = find_app(app_path)
        return app
    if obj.broker_url:
        return Celery(bare_name, broker=obj.broker_url, set_as_current=False)
    raise CliError("give --app or --broker-url (MPSTATE_BROKER_URL)", EXIT_USAGE)
