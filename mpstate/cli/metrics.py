"""``mpstate metrics serve``: the worker host's Prometheus endpoint.

A prefork worker counts in its pool children, each writing to its own file in
``PROMETHEUS_MULTIPROC_DIR`` (``mpstate.metrics.multiprocess``). This process adds those files
up at each scrape and adds the store's gauges (runs by status, unmatched callbacks), so one
port per host serves every worker on it, and a worker restart or a recycled child loses nothing
that was counted. Serving from a process of its own, rather than from the worker's main
process (``start_http_server`` in ``worker_init``), keeps HTTP out of the process that talks to
the broker, and lets several workers on one host share one directory and one port.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from mpstate.cli.context import CliContext
from mpstate.cli.exit_codes import EXIT_USAGE, CliError

__all__ = ["metrics"]


@click.group()
def metrics() -> None:
    """Serve Prometheus metrics: the workers' counts and the store's gauges."""


@metrics.command()
@click.option("--host", envvar="MPSTATE_METRICS_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="MPSTATE_METRICS_PORT", default=9808, show_default=True, type=int)
@click.option(
    "--multiproc-dir",
    envvar="PROMETHEUS_MULTIPROC_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The workers' multiprocess directory, whose files are added up at each scrape. "
    "Without it only the store's gauges are served.",
)
@click.option(
    "--store/--no-store",
    "with_store",
    default=True,
    show_default=True,
    help="Also serve the gauges read from the store (serve them from one endpoint only, or "
    "aggregate them with max() in your queries).",
)
@click.option("--log-level", default="warning", show_default=True)
@click.pass_obj
def serve(
    obj: CliContext,
    host: str,
    port: int,
    multiproc_dir: Path | None,
    with_store: bool,
    log_level: str,
) -> None:
    """Serve GET /metrics (any path answers) on HOST:PORT."""
    try:
        import uvicorn  # noqa: PLC0415 - the web extra

        from mpstate.metrics import metrics_app  # noqa: PLC0415
    except ImportError as exc:
        raise CliError(f"metrics need: pip install 'mpstate[web]' ({exc})", EXIT_USAGE) from exc
    if multiproc_dir is not None and not multiproc_dir.is_dir():
        raise click.BadParameter(
            f"{multiproc_dir} is not a directory", param_hint="'--multiproc-dir'"
        )
    if multiproc_dir is None and not with_store:
        raise click.UsageError("nothing to serve: give --multiproc-dir, or drop --no-store")
    path = None if multiproc_dir is None else os.fspath(multiproc_dir)
    store = obj.store() if with_store else None
    asgi = metrics_app(store, [], multiprocess=path)
    uvicorn.run(asgi, host=host, port=port, log_level=log_level)
