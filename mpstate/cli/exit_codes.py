"""Exit codes, and the one place an mpstate error becomes a message and a code.

Scripts branch on the code (retry on 4, give up on 3), so every command maps errors here
instead of choosing codes itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import click

from mpstate import (
    InvalidInputError,
    MpStateError,
    RunNotFoundError,
    StateStoreUnavailableError,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "from_mpstate_error",
    "redacted_url",
]

EXIT_OK = 0
#: Any other mpstate error, e.g. cancelling a completed run.
EXIT_ERROR = 1
#: Bad options or arguments, and input the store refused (``InvalidInputError``).
EXIT_USAGE = 2
#: No such run (or not in the given tenant).
EXIT_NOT_FOUND = 3
#: Redis could not be reached; retrying later may succeed.
EXIT_UNAVAILABLE = 4
#: Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class CliError(click.ClickException):
    """An error already worded for the operator, with its exit code (default 1)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        # click declares ``exit_code`` a class variable (one per exception class); an instance
        # value shadows it the same way at runtime, and click reads it from the instance.
        object.__setattr__(self, "exit_code", exit_code)


def redacted_url(url: str) -> str:
    """``url`` with its password masked, so error messages never print a secret."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def from_mpstate_error(exc: MpStateError, redis_url: str) -> CliError:
    """The operator's message and exit code for an error the store raised."""
    if isinstance(exc, StateStoreUnavailableError):
        detail = exc.__cause__ if exc.__cause__ is not None else exc
        return CliError(
            f"cannot reach Redis at {redacted_url(redis_url)}: {detail}", EXIT_UNAVAILABLE
        )
    if isinstance(exc, RunNotFoundError):
        return CliError(f"run {exc.run_id!r} not found", EXIT_NOT_FOUND)
    if isinstance(exc, InvalidInputError):
        return CliError(str(exc), EXIT_USAGE)
    return CliError(str(exc), EXIT_ERROR)
