"""The operator CLI, ``mpstate``: list and inspect runs, read or follow their logs, cancel them.

Needs ``pip install 'mpstate[cli]'``. click and rich are imported only when ``main`` runs, so
importing this package works without them and ``main`` can say what to install.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpstate.cli.group import cli

__all__ = ["cli", "main"]

#: Printed (exit 2) when the ``cli`` extra is not installed.
MISSING_EXTRA = "the mpstate CLI needs: pip install 'mpstate[cli]'"

_EXTRA_MODULES = frozenset({"click", "rich"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: the process arguments) and return its exit code."""
    try:
        from mpstate.cli.group import cli  # noqa: PLC0415 - lazy: click/rich are optional
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in _EXTRA_MODULES:
            raise
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    code: int = cli.main(args=argv, prog_name="mpstate", standalone_mode=False)
    return code


def __getattr__(name: str) -> Any:
    # ``cli`` (the click group) is imported on first use, for the same reason as in ``main``.
    if name == "cli":
        from mpstate.cli.group import cli  # noqa: PLC0415 - lazy on purpose

        return cli
    raise AttributeError(f"module 'mpstate.cli' has no attribute {name!r}")
