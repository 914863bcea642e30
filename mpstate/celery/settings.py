"""``CelerySettings``: every ``app.conf.mpstate_*`` key, read and validated once.

``MpState`` builds one from its app's configuration (``CelerySettings.from_conf(app.conf)``) and
everything in the Celery layer reads it from there (``mp.settings``). A bad value fails at
``MpState(app)``, naming its key, rather than at the first outage or webhook that would have used
it; and an unknown ``mpstate_*`` key is refused, so a misspelled setting is not silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Self

from mpstate.core import check_positive
from mpstate.errors import InvalidInputError

__all__ = ["PREFIX", "CelerySettings"]

#: The prefix of every setting in ``app.conf`` (``mpstate_outage_window_s`` and so on).
PREFIX = "mpstate_"

#: Keys of a kombu publish retry policy whose values are counts or durations (checked here).
_NUMERIC_POLICY_KEYS = frozenset({"max_retries", "interval_start", "interval_step", "interval_max"})
#: The other keys ``kombu.Connection.ensure`` takes (callables, exception types: passed as is).
_OTHER_POLICY_KEYS = frozenset({"errback", "on_revive", "retry_errors"})

_DEFAULT_PUBLISH_RETRY_POLICY: Mapping[str, Any] = MappingProxyType(
    {"max_retries": 30, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}
)


@dataclass(frozen=True, slots=True)
class CelerySettings:
    """The Celery layer's settings; each field is ``app.conf.mpstate_<field name>``."""

    #: Redis URL of the store, used when ``MpState`` is given no store.
    store_url: str | None = None
    #: How long a transition rides out a store outage before ``StateStoreUnavailableError`` is
    #: raised: one deadline for every retry inside it (see ``mpstate.celery.lifecycle``).
    outage_window_s: float = 60.0
    #: How often a webhook for a job no run has recorded yet is retried.
    webhook_retry_interval_s: float = 2.0
    #: How long such a webhook is retried before it is dropped (with a warning).
    webhook_unknown_window_s: float = 300.0
    #: How a step's task is published after the commit that decided it (kombu's retry policy):
    #: retried through a broker outage about as long as a transition rides out a store outage
    #: (kombu's default gives up after 0.6 s, and the advancement would wait for the reconciler).
    publish_retry_policy: Mapping[str, Any] = field(
        default_factory=lambda: _DEFAULT_PUBLISH_RETRY_POLICY
    )

    def __post_init__(self) -> None:
        # Frozen: normalized values are written with object.__setattr__.
        if self.store_url is not None and (
            not isinstance(self.store_url, str) or not self.store_url
        ):
            raise InvalidInputError(
                f"{PREFIX}store_url must be a non-empty string, not {self.store_url!r}"
            )
        for name in ("outage_window_s", "webhook_retry_interval_s", "webhook_unknown_window_s"):
            object.__setattr__(self, name, _duration(getattr(self, name), PREFIX + name))
        policy = _publish_retry_policy(self.publish_retry_policy)
        object.__setattr__(self, "publish_retry_policy", policy)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> Self:
        """Read every ``mpstate_*`` key of a Celery ``app.conf`` (or any mapping) once.

        A key that is absent or None takes the field's default. Raises ``InvalidInputError``
        naming the key for a bad value, and for an ``mpstate_*`` key that is not a setting.
        """
        known = {PREFIX + f.name: f.name for f in fields(cls)}
        unknown = sorted(
            key
            for key in conf
            if isinstance(key, str) and key.lower().startswith(PREFIX) and key not in known
        )
        if unknown:
            raise InvalidInputError(
                f"unknown Celery setting {', '.join(unknown)}: "
                f"mpstate's settings are {', '.join(sorted(known))}"
            )
        values = {name: conf.get(key) for key, name in known.items()}
        return cls(**{name: value for name, value in values.items() if value is not None})


def _duration(value: object, key: str) -> float:
    """A positive, finite number of seconds; a numeric string too (as configs from the
    environment give them)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidInputError(f"{key} must be a number of seconds, not {value!r}") from None
    return check_positive(value, key)


def _publish_retry_policy(policy: object) -> Mapping[str, Any]:
    """A read-only copy of a kombu retry policy whose keys and numbers are checked."""
    key = PREFIX + "publish_retry_policy"
    if not isinstance(policy, Mapping):
        raise InvalidInputError(f"{key} must be a mapping, not {policy!r}")
    unknown = sorted(str(k) for k in policy if k not in _NUMERIC_POLICY_KEYS | _OTHER_POLICY_KEYS)
    if unknown:
        raise InvalidInputError(f"{key} has unknown keys {unknown}")
    for name in _NUMERIC_POLICY_KEYS & policy.keys():
        value = policy[name]
        if name == "max_retries" and value is None:  # kombu: retry forever
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"{key}[{name!r}] must be a number, not {value!r}")
        if not (0 <= value < math.inf) or (name == "max_retries" and not isinstance(value, int)):
            what = "an integer" if name == "max_retries" else "a finite number"
            raise InvalidInputError(f"{key}[{name!r}] must be {what} >= 0, not {value!r}")
    return MappingProxyType(dict(policy))
