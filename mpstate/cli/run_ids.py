"""``RUN``: every command that takes a run accepts its id or a unique prefix of it.

The demo and ``mpstate events`` lines print short ids (the first eight characters); an operator
types those back. The exact id is tried first (one read); otherwise the newest ``PREFIX_SCAN``
runs (of the tenant, with ``--tenant``) are searched for ids starting with what was given. The
store indexes runs by time, not by id, so the search is bounded: an older run needs its whole id.
"""

from __future__ import annotations

from mpstate import PipelineRun, PipelineStateStore, RunNotFoundError
from mpstate._checks import check_id
from mpstate.cli.exit_codes import EXIT_USAGE, CliError
from mpstate.lookup import PREFIX_SCAN, runs_named

__all__ = ["PREFIX_SCAN", "RUN_HELP", "find_run"]


#: Most matching ids an ambiguous prefix's error lists.
SHOWN_MATCHES = 5

#: The help of every command's RUN argument (its epilog).
RUN_HELP = (
    f"RUN is a run id, or its start if no other run's id starts the same way (looked for among "
    f"the newest {PREFIX_SCAN:,} runs, of the tenant with --tenant)."
)


def find_run(store: PipelineStateStore, given: str) -> PipelineRun:
    """The run (without its log) whose id is ``given``, else the only one of the newest
    ``PREFIX_SCAN`` runs in ``store`` whose id starts with it (``mpstate.lookup``).

    Raises ``RunNotFoundError`` when no run matches (exit 3), and ``CliError`` with exit 2 when
    several do, naming up to ``SHOWN_MATCHES`` of them.
    """
    check_id(given, "run_id")  # an empty or oversized id is refused input (exit 2)
    matches = runs_named(store, given, scan=PREFIX_SCAN)
    if not matches:
        raise RunNotFoundError(given)
    if len(matches) > 1:
        shown = ", ".join(run.run_id for run in matches[:SHOWN_MATCHES])
        more = f" and {len(matches) - SHOWN_MATCHES} more" if len(matches) > SHOWN_MATCHES else ""
        raise CliError(
            f"{len(matches)} runs have an id starting with {given!r} ({shown}{more}): "
            "give more of the id",
            EXIT_USAGE,
        )
    return matches[0]
