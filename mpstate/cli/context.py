"""``CliContext``: the global options, and the store built from them on first use.

The store is built lazily so ``--help`` and usage errors never touch Redis, and once so every
command of one invocation shares one connection pool (closed when the command ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mpstate import InvalidInputError, PipelineRun
from mpstate.cli import MISSING_EXTRA
from mpstate.cli.exit_codes import EXIT_USAGE, CliError, database_of, redacted_url
from mpstate.cli.run_ids import find_run

if TYPE_CHECKING:
    from mpstate.redis import RedisPipelineStateStore

__all__ = ["CliContext"]

#: Redis timeouts for an interactive tool: a dead server is reported in seconds, not minutes.
SOCKET_CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
RETRIES = 1

_TCP_SCHEMES = frozenset({"redis", "rediss", "redis+cluster", "rediss+cluster"})


@dataclass
class CliContext:
    """What every command needs: where the store is, where Flower and the broker are, and how
    to print."""

    redis_url: str
    prefix: str
    flower_url: str | None = None
    broker_url: str | None = None
    as_json: bool = False
    _store: RedisPipelineStateStore | None = field(default=None, init=False, repr=False)

    def store(self, tenant_id: str | None = None) -> RedisPipelineStateStore:
        """The store, scoped to ``tenant_id`` when one is given."""
        if self._store is None:
            self._store = self._build_store()
        return self._store if tenant_id is None else self._store.for_tenant(tenant_id)

    def find_run(self, run_id: str, tenant_id: str | None = None) -> PipelineRun:
        """The run (without its log) a RUN argument names: its id, or a unique prefix of it
        among the newest runs (of ``tenant_id``'s); see ``run_ids.find_run``."""
        return find_run(self.store(tenant_id), run_id)

    def where(self) -> str:
        """Where the store is, for hints: the URL (password masked), database and prefix."""
        return (
            f"Redis {redacted_url(self.redis_url)}, database {database_of(self.redis_url)}, "
            f"prefix {self.prefix!r}"
        )

    def _build_store(self) -> RedisPipelineStateStore:
        self._check_database()
        try:
            from mpstate.redis import RedisPipelineStateStore  # noqa: PLC0415 - redis is optional
        except ImportError as exc:
            raise CliError(MISSING_EXTRA, EXIT_USAGE) from exc
        try:
            return RedisPipelineStateStore.from_url(
                self.redis_url,
                prefix=self.prefix,
                socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                retries=RETRIES,
            )
        except InvalidInputError:
            raise  # a bad --prefix, reported like any refused input
        except ValueError as exc:  # redis-py refuses a malformed URL with a plain ValueError
            raise CliError(
                f"invalid --redis-url {redacted_url(self.redis_url)}: {exc}", EXIT_USAGE
            ) from exc

    def _check_database(self) -> None:
        # redis-py silently uses database 0 for a path that is not a number (redis://host/dev).
        if urlsplit(self.redis_url).scheme not in _TCP_SCHEMES:
            return  # unix:// reads ?db= itself; a wrong scheme is redis-py's to refuse
        database = database_of(self.redis_url)
        if not database.isdigit():
            raise CliError(
                f"invalid --redis-url {redacted_url(self.redis_url)}: the database must be a "
                f"number >= 0, not {database!r}",
                EXIT_USAGE,
            )

    def close(self) -> None:
        """Close the store's connections, if it was built."""
        if self._store is not None:
            self._store.close()
            self._store = None
