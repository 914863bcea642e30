"""``mpstate dashboard serve``: the operator dashboard as a standalone server (uvicorn).

Read-only unless ``--token`` or ``--basic-auth`` names who may act; the actions (cancel, re-run,
re-poll, approve, reject, resume) also need the Celery app that runs the steps (``--app``, or
``--broker-url`` to publish by task name), as ``runs rerun`` does.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import click

from mpstate.cli.celery_apps import app_option, bound_mpstate, publishing_app
from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError
from mpstate.errors import InvalidInputError

if TYPE_CHECKING:
    from mpstate.dashboard import DashboardAuth

__all__ = ["dashboard"]


@click.group()
def dashboard() -> None:
    """The operator dashboard: runs, timelines, live logs and actions, in a browser."""


@dashboard.command()
@click.option("--host", envvar="MPSTATE_DASHBOARD_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="MPSTATE_DASHBOARD_PORT", default=8500, show_default=True, type=int)
@click.option(
    "--token",
    envvar="MPSTATE_DASHBOARD_TOKEN",
    show_envvar=True,
    help="Who knows it may act: Authorization: Bearer, or the sign-in form (8+ characters).",
)
@click.option(
    "--basic-auth",
    "users",
    multiple=True,
    envvar="MPSTATE_DASHBOARD_USERS",
    show_envvar=True,
    metavar="USER:PASSWORD",
    help="HTTP basic users who may act; repeat, or space-separate them in the variable.",
)
@click.option("--read-only", is_flag=True, help="No actions, whoever signs in.")
@click.option(
    "--require-auth-to-read", is_flag=True, help="Every page needs auth, not only actions."
)
@click.option("--tenant", "tenant_id", metavar="T", help="Show this tenant's runs only.")
@click.option(
    "--metrics",
    is_flag=True,
    help="Serve GET /metrics (Prometheus): the store's gauges and what this process counted.",
)
@app_option
@click.option("--log-level", default="info", show_default=True)
@click.pass_obj
def serve(
    obj: CliContext,
    host: str,
    port: int,
    token: str | None,
    users: tuple[str, ...],
    read_only: bool,
    require_auth_to_read: bool,
    tenant_id: str | None,
    metrics: bool,
    app_path: str | None,
    log_level: str,
) -> None:
    """Serve the dashboard on http://HOST:PORT/ (the Flower links use --flower-url)."""
    try:
        import uvicorn  # noqa: PLC0415 - the dashboard extra

        from mpstate.aio.redis import AsyncRedisPipelineStateStore  # noqa: PLC0415
        from mpstate.dashboard import dashboard_app  # noqa: PLC0415
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs: pip install 'mpstate[dashboard]' ({exc})", EXIT_USAGE
        ) from exc
    auth = _auth(token, users)
    store = obj.store()
    acts = auth is not None and not read_only
    if acts and not (app_path or obj.broker_url):
        click.echo("note: no --app or --broker-url, so the actions are off (read-only)", err=True)
        acts = False
    with ExitStack() as stack:
        mp = None
        if acts:
            app = publishing_app(obj, app_path, "mpstate-dashboard")
            mp = stack.enter_context(bound_mpstate(app, obj))
        try:
            asgi = dashboard_app(
                store,
                mp=mp,
                async_store=AsyncRedisPipelineStateStore.from_url(obj.redis_url, prefix=obj.prefix),
                auth=auth,
                tenant_id=tenant_id,
                flower_url=obj.flower_url,
                read_only=not acts,
                require_auth_to_read=require_auth_to_read,
                metrics_app=_metrics_app(obj, tenant_id) if metrics else None,
            )
        except InvalidInputError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
        uvicorn.run(asgi, host=host, port=port, log_level=log_level, proxy_headers=True)


def _metrics_app(obj: CliContext, tenant_id: str | None) -> Any:
    """``/metrics``: the store's gauges (of ``tenant_id``'s runs in tenant mode: a tenant view
    has no unmatched callbacks) and what this process counted (its actions)."""
    from mpstate.metrics import metrics_app  # noqa: PLC0415 - the web extra

    return metrics_app(obj.store(tenant_id), unmatched=tenant_id is None)


def _auth(token: str | None, users: tuple[str, ...]) -> DashboardAuth | None:
    """``--token`` or ``--basic-auth`` as a ``DashboardAuth`` (a usage error for both, or bad)."""
    from mpstate.dashboard import BasicAuth, TokenAuth  # noqa: PLC0415

    if token and users:
        raise CliError("give --token or --basic-auth, not both", EXIT_USAGE)
    try:
        if token:
            return TokenAuth(token)
        if users:
            pairs = {}
            for entry in users:
                name, sep, password = entry.partition(":")
                if not (name and sep and password):
                    raise CliError(
                        f"--basic-auth {name or entry!r}...: give USER:PASSWORD", EXIT_USAGE
                    )
                pairs[name] = password
            return BasicAuth(pairs)
    except InvalidInputError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    return None
