"""Which signature scheme verifies each provider's callbacks: presets by name, any override.

A provider named ``replicate``, ``openai``, ``fal``, ``elevenlabs`` or ``luma`` gets its scheme
(and, on the Celery side, its payload adapter: ``mpstate.celery.adapters``) by default; any other
name gets mpstate's own scheme. ``schemes`` overrides a provider's scheme by name (one of
``mpstate.webhooks.schemes.SCHEME_NAMES``, or ``capability``) or with a ``SignatureScheme``
instance, so any provider can be configured with any scheme and any adapter.

``capability`` is not a signature: the provider (Luma signs nothing) calls back on a URL that
carries an unguessable token bound to the run, the step and the attempt
(``PipelineTask.callback_url``), checked by the receiver with the provider's secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpstate._checks import check_id, check_positive
from mpstate.errors import InvalidInputError
from mpstate.webhooks.schemes import SCHEME_NAMES, SignatureScheme, scheme_for

__all__ = ["CAPABILITY", "PRESET_SCHEMES", "ProviderConfig", "Secrets", "provider_configs"]

#: The scheme of providers that sign nothing and call back on a capability URL.
CAPABILITY = "capability"

#: Each preset provider's scheme. Sources: Replicate and OpenAI follow Standard Webhooks
#: (replicate.com/docs/topics/webhooks/verify-webhook, openai-python
#: src/openai/resources/webhooks.py); fal signs with Ed25519 (docs.fal.ai webhooks); ElevenLabs
#: with ``ElevenLabs-Signature: t=,v0=`` (elevenlabs-python webhooks_custom.py); Luma signs nothing
#: (docs.lumalabs.ai/changelog/callbacks-and-credits-balance).
PRESET_SCHEMES: Mapping[str, str] = {
    "replicate": "standard-webhooks",
    "openai": "standard-webhooks",
    "fal": "fal",
    "elevenlabs": "elevenlabs",
    "luma": CAPABILITY,
}

#: Each provider's secret, or several during a rotation.
Secrets = Mapping[str, str | Sequence[str]]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How the receiver authenticates one provider's callbacks."""

    name: str
    #: Verifies a signed callback; None for a capability-URL provider.
    scheme: SignatureScheme | None
    #: The provider's secrets (the capability tokens' keys for a capability-URL provider).
    secrets: tuple[str, ...]

    @property
    def capability(self) -> bool:
        return self.scheme is None


def provider_configs(
    secrets: Secrets,
    schemes: Mapping[str, str | SignatureScheme] | None = None,
    *,
    tolerance_s: float | None = None,
    scheme_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, ProviderConfig]:
    """One ``ProviderConfig`` per provider named in ``secrets``, ``schemes`` or
    ``scheme_options`` (a scheme that needs no secret: fal's keys are public).

    ``tolerance_s`` overrides every scheme's replay window; ``scheme_options`` passes options to a
    provider's scheme (fal: ``jwks_url``, ``jwks_file``, ``user_id``). Raises
    ``InvalidInputError`` for an unknown scheme name, a provider without a secret its scheme needs,
    or a bad option.
    """
    if not isinstance(secrets, Mapping):
        raise InvalidInputError("secrets must map each provider to its secret(s)")
    schemes = dict(schemes or {})
    options = dict(scheme_options or {})
    if tolerance_s is not None:
        check_positive(tolerance_s, "tolerance_s")
    names = list(dict.fromkeys([*secrets, *schemes, *options]))
    if not names:
        raise InvalidInputError("configure at least one provider secret (provider -> secret)")
    configs = {}
    for name in names:
        check_id(name, "provider")
        values = _secrets_of(name, secrets.get(name))
        chosen = schemes.get(name, PRESET_SCHEMES.get(name, "mpstate"))
        configs[name] = _config(name, chosen, values, tolerance_s, options.get(name, {}))
    return configs


def _secrets_of(provider: str, value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    values = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(v, str) and v for v in values):
        raise InvalidInputError(f"provider {provider!r} needs a non-empty secret")
    return values  # empty: a scheme with public keys (fal); the others refuse it below


def _config(
    name: str,
    chosen: str | SignatureScheme,
    secrets: tuple[str, ...],
    tolerance_s: float | None,
    options: Mapping[str, Any],
) -> ProviderConfig:
    if not isinstance(chosen, str):
        return ProviderConfig(name, chosen, secrets)
    if chosen == CAPABILITY:
        if not secrets:
            raise InvalidInputError(f"provider {name!r} needs a secret for its callback tokens")
        return ProviderConfig(name, None, secrets)
    if chosen not in SCHEME_NAMES:
        known = ", ".join([*SCHEME_NAMES, CAPABILITY])
        raise InvalidInputError(f"provider {name!r}: unknown scheme {chosen!r} (one of {known})")
    if chosen != "fal" and not secrets:
        raise InvalidInputError(f"provider {name!r} needs a secret for scheme {chosen!r}")
    extra = dict(options)
    if tolerance_s is not None:
        extra.setdefault("tolerance_s", tolerance_s)
    return ProviderConfig(name, scheme_for(chosen, secrets, **extra), secrets)
