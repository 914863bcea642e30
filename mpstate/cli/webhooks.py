"""``mpstate webhooks serve``: the HTTP webhook receiver as a standalone server (uvicorn).

It publishes each verified callback to the broker as ``mpstate.resolve_webhook``; the workers
resolve it. With ``--app`` the receiver loads your Celery app, so payloads are checked with the
adapters registered on its ``MpState``; without it, a bare app on ``--broker-url`` publishes and
payloads are checked against the default shape.
"""

from __future__ import annotations

import click

from mpstate.cli.celery_apps import app_option, celery_app_for
from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError
from mpstate.errors import InvalidInputError

__all__ = ["webhooks"]


@click.group()
def webhooks() -> None:
    """Receive provider callbacks over HTTP."""


@webhooks.command()
@click.option("--host", envvar="MPSTATE_WEBHOOK_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="MPSTATE_WEBHOOK_PORT", default=8000, show_default=True, type=int)
@click.option(
    "--secrets",
    envvar="MPSTATE_WEBHOOK_SECRETS",
    show_envvar=True,
    required=True,
    help="provider=secret[,provider=secret...]; name a provider twice to rotate its secret.",
)
@app_option
@click.option("--tolerance", default=300.0, show_default=True, help="Replay window, seconds.")
@click.option("--max-body-bytes", default=256 * 1024, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True)
@click.pass_obj
def serve(
    obj: CliContext,
    host: str,
    port: int,
    secrets: str,
    app_path: str | None,
    tolerance: float,
    max_body_bytes: int,
    log_level: str,
) -> None:
    """Serve POST /webhooks/{provider} and GET /healthz."""
    try:
        import uvicorn  # noqa: PLC0415 - the web extra

        from mpstate.webhooks import parse_secrets, webhook_app  # noqa: PLC0415
    except ImportError as exc:
        raise CliError(
            f"the receiver needs: pip install 'mpstate[web]' ({exc})", EXIT_USAGE
        ) from exc
    celery_app = celery_app_for(obj, app_path, "mpstate-receiver", needs="web")
    try:
        asgi = webhook_app(
            celery_app,
            parse_secrets(secrets),
            tolerance_s=tolerance,
            max_body_bytes=max_body_bytes,
        )
    except InvalidInputError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    uvicorn.run(asgi, host=host, port=port, log_level=log_level, proxy_headers=True)
