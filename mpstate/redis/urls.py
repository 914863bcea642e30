"""What ``from_url`` makes of a URL, for the sync and the asyncio stores alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.backoff import ExponentialBackoff

from mpstate.errors import InvalidInputError
from mpstate.options import StoreOptionFields, StoreOptions
from mpstate.redis.requests import UNAVAILABLE

__all__ = ["CLUSTER_SCHEMES", "ClientSettings", "StoreArguments", "client_settings", "cluster_url"]

#: URL schemes that name a Redis Cluster (any of its nodes), mapped to redis-py's schemes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """``url`` with a plain scheme if it names a Redis Cluster (``redis+cluster://``), else None."""
    scheme, separator, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if separator else None
    return f"{plain}://{rest}" if plain else None


class StoreArguments(StoreOptionFields, total=False):
    """What ``from_url`` passes on to the store's constructor (all but the client and retry)."""

    prefix: str
    options: StoreOptions | None
    replica_acks: int
    replica_ack_timeout_ms: int
    indexes_in_script: bool | None


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The URL redis-py gets, whether it names a cluster, and the client and retry options."""

    url: str
    cluster: bool
    timeouts: dict[str, Any]
    retries: int

    def retry_args(self) -> dict[str, Any]:
        """Arguments of the store's ``Retry`` (sync or asyncio): whole requests, on outages."""
        return {
            "backoff": ExponentialBackoff(cap=0.5, base=0.05),
            "retries": self.retries,
            "supported_errors": UNAVAILABLE,
        }


def client_settings(
    url: str, *, socket_timeout: float, socket_connect_timeout: float, retries: int, cluster: bool
) -> ClientSettings:
    """Validate ``from_url``'s arguments and resolve a ``redis+cluster://`` scheme."""
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"url must be a non-empty string, not {url!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidInputError(f"retries must be an integer >= 0, not {retries!r}")
    plain_url = cluster_url(url)
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
    }
    return ClientSettings(plain_url or url, cluster or plain_url is not None, timeouts, retries)
