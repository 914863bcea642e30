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

from mpstate._checks import check_id, check_positive
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
    #: How long a step waits for a provider's answer (``await_external``) before it fails with
    #: ``external-timeout`` (retried within its limit): no run stays suspended for good.
    external_timeout_s: float = 86400.0
    #: Per-provider deadlines, ``{provider: seconds}``, over ``external_timeout_s``.
    external_timeouts: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    #: A registered poller's first poll comes this long after the step starts waiting; each
    #: "still running" answer multiplies the wait by ``poll_backoff``, up to
    #: ``poll_max_interval_s``.
    poll_interval_s: float = 5.0
    poll_backoff: float = 2.0
    poll_max_interval_s: float = 300.0
    #: The webhook receiver's public base URL, for ``PipelineTask.callback_url``.
    callback_base_url: str | None = None
    #: The key of callback-URL tokens: the secret of those providers on the receiver.
    callback_secret: str | None = None

    def __post_init__(self) -> None:
        # Frozen: normalized values are written with object.__setattr__.
        for name in ("store_url", "callback_base_url", "callback_secret"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidInputError(f"{PREFIX}{name} must be a non-empty string, not {value!r}")
        for name in (
            "outage_window_s",
            "webhook_retry_interval_s",
            "webhook_unknown_window_s",
            "external_timeout_s",
            "poll_interval_s",
            "poll_max_interval_s",
        ):
            object.__setattr__(self, name, _duration(getattr(self, name), PREFIX + name))
        if _duration(self.poll_backoff, PREFIX + "poll_backoff") < 1:
            raise InvalidInputError(f"{PREFIX}poll_backoff must be at least 1")
        object.__setattr__(self, "poll_backoff", float(self.poll_backoff))
        object.__setattr__(self, "external_timeouts", _timeouts(self.external_timeouts))
        policy = _publish_retry_policy(self.publish_retry_policy)
        object.__setattr__(self, "publish_retry_policy", policy)

    def timeout_for(self, provider: str) -> float:
        """How long a step waits for ``provider`` before ``external-timeout``."""
        return self.external_timeouts.get(provider, self.external_timeout_s)

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


def _timeouts(value: object) -> Mapping[str, float]:
    """A read-only ``{provider: seconds}``."""
    key = PREFIX + "external_timeouts"
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{key} must be a mapping of provider to seconds, not {value!r}")
    return MappingProxyType(
        {
            check_id(provider, f"{key} provider"): _duration(seconds, f"{key}[{provider!r}]")
            for provider, seconds in value.items()
        }
    )


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
