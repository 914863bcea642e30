"""``mpstate webhooks serve``: the HTTP webhook receiver as a standalone server (uvicorn), and
``mpstate webhooks unmatched``: the callbacks that could never reach a step.

With ``--app`` the receiver loads your Celery app and applies each verified callback to its run
itself, with the adapters registered on its ``MpState`` (or each provider's preset); without it, a
bare app on ``--broker-url`` publishes each callback as ``mpstate.resolve_webhook`` for the
workers. Each provider is verified by its preset scheme (``replicate``, ``openai``, ``fal``,
``elevenlabs``, ``luma``), mpstate's own otherwise, or the one ``--scheme`` names.
"""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from mpstate.cli.celery_apps import app_option, celery_app_for
from mpstate.cli.context import CliContext
from mpstate.cli.event_lines import event_time
from mpstate.cli.exit_codes import EXIT_USAGE, CliError
from mpstate.cli.render import make_console, print_json
from mpstate.errors import InvalidInputError

__all__ = ["webhooks"]


@click.group()
def webhooks() -> None:
    """Receive provider callbacks over HTTP, and list those that matched no run."""


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
@click.option(
    "--scheme",
    "schemes",
    multiple=True,
    metavar="PROVIDER=SCHEME",
    help="Verify PROVIDER with SCHEME (standard-webhooks, stripe, elevenlabs, mpstate, fal, "
    "capability) instead of its preset; repeat for several.",
)
@click.option(
    "--jwks",
    "jwks",
    multiple=True,
    metavar="PROVIDER=URL|FILE",
    help="Where an Ed25519 (fal) provider's public keys are: a JWKS URL or a local file.",
)
@app_option
@click.option(
    "--tolerance",
    type=float,
    default=None,
    help="Replay window in seconds, for every provider [default: each scheme's own].",
)
@click.option("--max-body-bytes", default=256 * 1024, show_default=True, type=int)
@click.option("--metrics", is_flag=True, help="Serve GET /metrics (Prometheus).")
@click.option("--log-level", default="info", show_default=True)
@click.pass_obj
def serve(
    obj: CliContext,
    host: str,
    port: int,
    secrets: str,
    schemes: tuple[str, ...],
    jwks: tuple[str, ...],
    app_path: str | None,
    tolerance: float | None,
    max_body_bytes: int,
    metrics: bool,
    log_level: str,
) -> None:
    """Serve POST /webhooks/{provider} (and capability URLs below it) and GET /healthz."""
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
            schemes=_pairs(schemes, "--scheme"),
            scheme_options={
                provider: {
                    "jwks_url" if where.startswith(("http://", "https://")) else "jwks_file": where
                }
                for provider, where in _pairs(jwks, "--jwks").items()
            },
            tolerance_s=tolerance,
            max_body_bytes=max_body_bytes,
            metrics=metrics,
        )
    except InvalidInputError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    uvicorn.run(asgi, host=host, port=port, log_level=log_level, proxy_headers=True)


def _jwks_option(where: str) -> str:
    return "jwks_url" if where.startswith(("http://", "https://")) else "jwks_file"


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``("a=x", "b=y")`` as ``{"a": "x", "b": "y"}``."""
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not (name and sep and rest):
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint=f"'{option}'")
        pairs[name] = rest
    return pairs


@webhooks.command()
@click.option("--provider", help="Only this provider's callbacks.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most."
)
@click.pass_obj
def unmatched(obj: CliContext, provider: str | None, limit: int) -> None:
    """Callbacks that could never reach a step, newest first: a job id no run recorded, or one
    recorded under another provider name; then the totals by provider and reason.

    `mpstate --json webhooks unmatched` prints {"callbacks": [...], "counts": [...]}.
    """
    store = obj.store()
    callbacks = store.list_unmatched(provider=provider, limit=limit)
    counts = sorted(store.count_unmatched().items())
    if obj.as_json:
        print_json(
            {
                "callbacks": [c.model_dump(mode="json", by_alias=True) for c in callbacks],
                "counts": [{"provider": p, "reason": r, "count": n} for (p, r), n in counts],
            }
        )
        return
    console = make_console()
    if not callbacks:
        console.print("no unmatched callbacks", style="dim")
    else:
        table = Table("at", "provider", "job", "reason", "detail", box=None, header_style="bold")
        for callback in callbacks:
            table.add_row(
                event_time(callback.at),
                Text(callback.provider),
                Text(callback.job_id or "-"),
                callback.reason,
                Text(callback.detail),
            )
        console.print(table)
    for (name, reason), count in counts:
        console.print(f"{name}: {count} {reason} in all")
