"""``make demo``: the product-photo pipeline end to end, live in the terminal.

With no arguments everything runs in this process on embedded defaults: an in-memory broker and
store, a Celery worker thread, the webhook receiver and the simulated video provider on loopback
HTTP. ``--redis URL`` puts the broker and the store on that Redis (keys under ``mpstate-demo``),
and ``--runs N`` starts several runs at once (repeated prompts hit the generation cache).
``--suspensions`` shows the two ways a run stops and waits for someone: an approval gate and a
budget (a stand-in reviewer answers both).
``--deployed`` starts nothing: it submits runs to the deployment the ``MPSTATE_*`` environment
describes (docker-compose.yml) and follows them. Exits 0 when every run completed, 1 otherwise.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from secrets import token_urlsafe
from typing import Any

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from celery_app.application import create_app, store_for
from celery_app.display import RunBoard
from celery_app.embedded import bind_loopback, serving, url_of, worker_thread
from celery_app.pipelines import start_product_photo
from celery_app.provider import ProviderBehaviour, provider_app
from celery_app.reviewer import Reviewer
from celery_app.settings import Settings
from mpstate import PipelineRun, PipelineStateStore, audit_run
from mpstate.celery import MpState
from mpstate.dashboard import dashboard_app
from mpstate.models import PipelineRunStatus
from mpstate.webhooks import parse_secrets, webhook_app

PROMPTS = ["a red bicycle on a white background", "a ceramic mug, studio light"]

#: Seconds between two runs' starts, so a repeated prompt finds the first run's image cached.
STAGGER_S = 0.6

#: ``--suspensions``: a run whose image waits for a person, and one its budget stops.
SUSPENSION_RUNS: list[dict[str, Any]] = [{"reviewed": True}, {"budget_usd": 0.30}]
#: The budget the stand-in reviewer resumes the second run with.
RAISED_BUDGET_USD = 1.00


@click.command(help=__doc__)
@click.option("--redis", "redis_url", metavar="URL", help="Broker and store on this Redis.")
@click.option("--deployed", is_flag=True, help="Use the deployment in MPSTATE_* instead.")
@click.option("--runs", default=1, show_default=True, type=click.IntRange(1, 50))
@click.option("--seed", default=4, show_default=True, help="Seed of the provider's behaviour.")
@click.option("--failure-rate", default=0.3, show_default=True, type=click.FloatRange(0, 1))
@click.option("--duplicate-rate", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--provider-delay", default=1.0, show_default=True, type=click.FloatRange(0, 60))
@click.option(
    "--provider-mode",
    type=click.Choice(["callback", "poll"]),
    default="callback",
    show_default=True,
    help="poll: the provider never calls back, and mpstate polls it for each job.",
)
@click.option(
    "--suspensions",
    is_flag=True,
    help="Two runs that stop and wait: one for a person's approval of its image, one for its "
    "budget ($0.30, while the video alone is estimated at $0.50). A stand-in reviewer answers "
    "each after --review-delay seconds, as `mpstate runs approve` / `runs resume` would.",
)
@click.option("--review-delay", default=2.0, show_default=True, type=click.FloatRange(0, 60))
@click.option("--timeout", default=90.0, show_default=True, help="Seconds before giving up.")
@click.option(
    "--keep-open",
    is_flag=True,
    help="Keep serving the dashboard (and the rest) after the runs end, until Ctrl-C.",
)
def main(
    redis_url: str | None,
    deployed: bool,
    runs: int,
    seed: int,
    failure_rate: float,
    duplicate_rate: float,
    provider_delay: float,
    provider_mode: str,
    suspensions: bool,
    review_delay: float,
    timeout: float,
    keep_open: bool,
) -> None:
    console = Console(highlight=False)
    # Through the console, so warnings print above the live view instead of tearing it.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    if deployed:
        settings = Settings.from_env()
        receiver_sock = provider_sock = None
    else:
        receiver_sock, provider_sock = bind_loopback(), bind_loopback()
        settings = _embedded_settings(redis_url, url_of(receiver_sock), url_of(provider_sock))
        settings = settings.model_copy(update={"poll_provider": provider_mode == "poll"})
    store = store_for(settings)
    app = create_app(settings, store)
    plans = SUSPENSION_RUNS if suspensions else [{}] * runs
    console.print(f"[bold]mpstate demo[/bold]: product-photo x{len(plans)} on {_where(settings)}")
    board = RunBoard(store, console)
    with ExitStack() as stack:
        if receiver_sock is not None and provider_sock is not None:
            behaviour = ProviderBehaviour(
                secret=settings.secret_for("video"),
                delay_s=provider_delay,
                duplicate_rate=duplicate_rate,
                failure_rate=failure_rate,
                seed=seed,
                callback_rate=0.0 if provider_mode == "poll" else 1.0,
            )
            _describe_provider(console, settings, behaviour, polled=provider_mode == "poll")
            stack.enter_context(serving(provider_app(behaviour), provider_sock))
            secrets = parse_secrets(settings.webhook_secrets)
            stack.enter_context(serving(webhook_app(app, secrets), receiver_sock))
            dashboard_url = _serve_dashboard(stack, store, console)
            concurrency = min(8, max(2, len(plans)))
            stack.enter_context(worker_thread(app, concurrency=concurrency))
        live = None
        if console.is_terminal:
            live = stack.enter_context(Live(board.render(), console=console, refresh_per_second=8))
        mp = MpState.of(app)
        reviewer = stack.enter_context(
            Reviewer(mp, delay_s=review_delay, raise_budget_to=RAISED_BUDGET_USD, say=console.print)
        )
        deadline = time.monotonic() + timeout
        for index, plan in enumerate(plans):
            if index:
                time.sleep(STAGGER_S)
            run = start_product_photo(
                mp, PROMPTS[index % len(PROMPTS)], tenant_id=settings.tenant_id, **plan
            )
            reviewer.watch(run)
            board.follow(run, timeout_s=max(0.0, deadline - time.monotonic()))
        while not board.all_done():
            if live is not None:
                live.update(board.render())
            time.sleep(0.1)
        if live is not None:
            live.update(board.render())
        if provider_sock is not None:
            provider_stats = httpx.get(f"{settings.provider_url}/stats", timeout=5).json()
            _keep_serving(console, dashboard_url, keep_open=keep_open)
    if live is None:
        console.print()
        console.print(board.render())
    if provider_sock is not None:
        _print_provider_stats(console, provider_stats)
    sys.exit(_conclude(console, board.runs(), store, settings))


def _serve_dashboard(stack: ExitStack, store: PipelineStateStore, console: Console) -> str:
    """The dashboard on the demo's store, read-only, on a loopback port; its URL."""
    url: str = stack.enter_context(serving(dashboard_app(store), bind_loopback()))
    console.print(f"dashboard (read-only) at [bold]{url}/[/bold]")
    return url


def _keep_serving(console: Console, dashboard_url: str, *, keep_open: bool) -> None:
    """With ``--keep-open``, wait for Ctrl-C while the dashboard and the rest keep serving."""
    if not keep_open:
        return
    console.print(f"the runs ended; the dashboard stays at {dashboard_url}/ until Ctrl-C")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print()


def _conclude(
    console: Console, finished: list[PipelineRun], store: PipelineStateStore, settings: Settings
) -> int:
    """Summarise and audit the runs; the exit status (0: all completed, audits clean)."""
    _summarise(console, finished, settings)
    findings = [f for run in finished for f in audit_run(store.require(run.run_id))]
    console.print(
        f"audit: every run equals the replay of its event log ({len(finished)} checked)"
        if not findings
        else "audit found:\n" + "\n".join(f"  {finding}" for finding in findings)
    )
    completed = all(r.status is PipelineRunStatus.COMPLETED for r in finished)
    return 0 if completed and not findings else 1


def _describe_provider(
    console: Console, settings: Settings, behaviour: ProviderBehaviour, *, polled: bool
) -> None:
    console.print(
        f"receiver {settings.receiver_url}  ·  simulated video provider "
        f"{settings.provider_url} (delay {behaviour.delay_s:.1f} s, duplicates "
        f"{behaviour.duplicate_rate:.0%}, failures {behaviour.failure_rate:.0%}, seed "
        f"{behaviour.seed}" + (", never calls back: polled" if polled else "") + ")\n"
    )


def _print_provider_stats(console: Console, stats: dict[str, int]) -> None:
    console.print(
        f"video provider: {stats['jobs']} job(s), "
        f"{stats['callbacks_sent']} signed callback(s) delivered, of which "
        f"{stats['duplicates_sent']} duplicate(s) (absorbed: no event) and "
        f"{stats['failures_sent']} failure(s) (the step was retried); "
        f"{stats['silent_jobs']} job(s) never called back, "
        f"{stats['polls']} poll(s) answered"
    )


def _embedded_settings(redis_url: str | None, receiver_url: str, provider_url: str) -> Settings:
    overrides: dict[str, object] = {"receiver_url": receiver_url, "provider_url": provider_url}
    # The embedded provider and receiver share a secret made for this run (there is no default).
    overrides["webhook_secrets"] = f"video={token_urlsafe(24)}"
    if redis_url:
        overrides |= {"broker_url": redis_url, "store_url": redis_url}
        overrides |= {"prefix": "mpstate-demo", "queue": "mpstate-demo"}
    else:
        overrides |= {"broker_url": "memory://localhost/", "store_url": "memory://"}
    return Settings.from_env({}, **overrides)


def _where(settings: Settings) -> str:
    if settings.store_url.startswith("memory://"):
        return "an in-memory broker and store (nothing to install or start)"
    return f"broker {settings.broker_url}, store {settings.store_url}"


def _summarise(console: Console, runs: list[PipelineRun], settings: Settings) -> None:
    completed = sum(r.status is PipelineRunStatus.COMPLETED for r in runs)
    total = sum(r.cost_usd for r in runs)
    console.print(f"[bold]{completed}/{len(runs)} run(s) completed[/bold], total cost ${total:.3f}")
    first = runs[0].run_id
    if not settings.store_url.startswith("memory://"):
        target = f"--redis-url {settings.store_url} --prefix {settings.prefix}"
        console.print("Look at it:")
        console.print(f"  mpstate {target} runs show {first}")
        console.print(f"  mpstate {target} events {first}")
        console.print(f"  mpstate {target} runs list --tenant {settings.tenant_id}")
    else:
        console.print(
            "These runs lived in memory and are gone. To keep them and look at them with the CLI:"
        )
        console.print('  make demo ARGS="--redis redis://localhost:6379/0"')
        console.print(
            f"  .venv/bin/mpstate --redis-url redis://localhost:6379/0 --prefix mpstate-demo "
            f"runs list --tenant {settings.tenant_id}"
        )


if __name__ == "__main__":
    main()
