"""``python -m chaos`` (``make chaos``): one chaos run; exit 0 only if no guarantee was broken."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from chaos.config import ChaosConfig
from chaos.runner import run_chaos


@click.command()
@click.option("--runs", default=200, show_default=True, help="Runs of the demo pipeline.")
@click.option("--workers", default=3, show_default=True, help="Prefork worker processes.")
@click.option("--seed", default=1, show_default=True)
@click.option("--scaled-down", is_flag=True, help="The version make test runs (20 runs).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=Path("chaos-summary.json"),
    show_default=True,
    help="Where the summary is written as JSON.",
)
@click.option("--workdir", type=click.Path(path_type=Path), help="Logs (default: a temp dir).")
def main(
    runs: int, workers: int, seed: int, scaled_down: bool, json_path: Path, workdir: Path | None
) -> None:
    """Drive many runs through a deployment while killing workers and restarting Redis."""
    console = Console(highlight=False)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    config = (
        ChaosConfig.scaled_down(seed=seed)
        if scaled_down
        else ChaosConfig(runs=runs, workers=workers, seed=seed)
    )
    began = time.monotonic()

    def progress(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - began:6.1f} s[/dim]  {message}")

    summary = run_chaos(config, workdir=workdir, progress=progress)
    summary.print(console)
    summary.write(json_path)
    console.print(f"summary written to {json_path}")
    sys.exit(0 if summary.passed else 1)


if __name__ == "__main__":
    main()
