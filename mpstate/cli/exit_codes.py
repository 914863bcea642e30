"""Exit codes, and the one place an mpstate error becomes a message and a code.

Scripts branch on the code (retry on 4, give up on 3), so every command maps errors here
instead of choosing codes itself.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

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
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "database_of",
    "from_mpstate_error",
    "from_redis_error",
    "redacted_url",
]

EXIT_OK = 0
#: Any other mpstate error, e.g. cancelling a completed run.
EXIT_ERROR = 1
#: Bad options or arguments, and input the store refused (``InvalidInputError``).
EXIT_USAGE = 2
#: No such run (or not in the given tenant).
EXIT_NOT_FOUND = 3
#: Redis could not be reached, or what answers at the URL is not Redis; retrying later may
#: succeed.
EXIT_UNAVAILABLE = 4
#: ``events --follow --timeout``: the timeout passed before the run ended (as ``timeout(1)``).
EXIT_TIMEOUT = 124
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


def database_of(url: str) -> str:
    """The database a Redis URL selects, as written: ``?db=`` over the path (as redis-py reads
    it; a ``unix://`` path is the socket's), else ``0``."""
    parts = urlsplit(url)
    given = parse_qs(parts.query).get("db")
    if given:
        return given[0]
    if parts.scheme == "unix":
        return "0"
    return unquote(parts.path).strip("/") or "0"


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


def from_redis_error(exc: BaseException, redis_url: str) -> CliError | None:
    """The operator's message and exit code for a redis-py error the store let through, or None
    for any other exception.

    The store reports refused/reset/timed-out connections itself (``StateStoreUnavailableError``);
    what reaches here is the rest: a server that does not speak the Redis protocol (exit 4, as
    unreachable: the URL points at something else), a database the server does not have (exit 2,
    a bad ``--redis-url``), anything else (exit 1).
    """
    try:
        from redis import exceptions  # noqa: PLC0415 - redis is an optional extra
    except ImportError:
        return None
    if not isinstance(exc, exceptions.RedisError):
        return None
    url = redacted_url(redis_url)
    if isinstance(exc, exceptions.ConnectionError | exceptions.TimeoutError):
        return CliError(f"cannot reach Redis at {url}: {exc}", EXIT_UNAVAILABLE)
    if isinstance(exc, exceptions.InvalidResponse):
        return CliError(
            f"cannot reach Redis at {url}: the server there does not speak the Redis protocol "
            f"({exc})",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, exceptions.ResponseError) and "db index" in str(exc).lower():
        return CliError(
            f"Redis at {url} has no database {database_of(redis_url)} ({exc}; the server's "
            "'databases' setting says how many it has)",
            EXIT_USAGE,
        )
    return CliError(f"Redis at {url} answered with an error: {exc}", EXIT_ERROR)
