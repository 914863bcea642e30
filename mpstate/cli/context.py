"""``CliContext``: the global options, and the store built from them on first use.

The store is built lazily so ``--help`` and usage errors never touch Redis, and once so every
command of one invocation shares one connection pool (closed when the command ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mpstate import InvalidInputError
from mpstate.cli import MISSING_EXTRA
from mpstate.cli.exit_codes import EXIT_USAGE, CliError, redacted_url

if TYPE_CHECKING:
    from mpstate.redis import RedisPipelineStateStore

__all__ = ["CliContext"]

#: Redis timeouts for an interactive tool: a dead server is reported in seconds, not minutes.
SOCKET_CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
RETRIES = 1


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

    def _build_store(self) -> RedisPipelineStateStore:
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

    def close(self) -> None:
        """Close the store's connections, if it was built."""
        if self._store is not None:
            self._store.close()
            self._store = None
