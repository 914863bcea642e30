"""Validating a run patch: which fields may change and what values they accept.

A patch is validated field by field against ``PipelineRun``'s own field definitions, without the
current run, so every backend accepts and refuses exactly the same patches and the Redis backend
never needs to read before it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel, create_model
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticSerializationError

from mpstate.errors import InvalidInputError
from mpstate.fields import CamelModel, ensure_storable
from mpstate.models import PipelineRun

__all__ = ["IMMUTABLE_RUN_FIELDS", "RunPatch", "ValidPatch", "validate_patch"]

#: Fields a patch may not touch. The store owns ``version``, ``updated_at`` and the log; a run's
#: identity (id, tenant, idempotency key, creation time) never changes, so indexes and tenant
#: isolation cannot be moved by an update.
IMMUTABLE_RUN_FIELDS = frozenset(
    {"run_id", "tenant_id", "idempotency_key", "created_at", "updated_at", "version", "events"}
)


def _optional(info: FieldInfo) -> tuple[Any, FieldInfo]:
    # Same annotation and constraints; no default applied, so unset fields stay out of the patch.
    field = FieldInfo.merge_field_infos(info, default=None)
    field.default_factory = None
    return info.annotation, field


RunPatch = cast(
    type[CamelModel],
    create_model(  # type: ignore[call-overload]
        "RunPatch",
        __base__=CamelModel,
        **{
            name: _optional(info)
            for name, info in PipelineRun.model_fields.items()
            if name not in IMMUTABLE_RUN_FIELDS
        },
    ),
)
RunPatch.__doc__ = "A validated partial update of a ``PipelineRun`` (only the fields it sets)."

_ALIASES = {info.alias or name: name for name, info in PipelineRun.model_fields.items()}


class ValidPatch:
    """A validated patch: its JSON document (what backends store) and, on demand, its values."""

    __slots__ = ("_values", "document")

    def __init__(self, document: dict[str, Any]) -> None:
        #: ``{camelCase field: JSON value}`` of the fields the patch sets.
        self.document = document
        self._values: dict[str, Any] | None = None

    @property
    def values(self) -> dict[str, Any]:
        """``{python field name: value}`` rebuilt from the document, for applying to a model.

        Read back from the JSON form, so a store applying values holds exactly what a store
        keeping the document does (a tuple becomes a list, a datetime in ``budget`` a string).
        """
        if self._values is None:
            model = RunPatch.model_validate(self.document)
            self._values = {name: getattr(model, name) for name in model.model_fields_set}
        return self._values


def validate_patch(patch: Mapping[str, Any] | BaseModel) -> ValidPatch:
    """Validate ``patch`` (run fields in either spelling).

    Raises ``InvalidInputError`` for an empty patch, an unknown or immutable field, or a value the
    field does not accept or that has no JSON form.
    """
    if isinstance(patch, BaseModel):
        patch = patch.model_dump(exclude_unset=True)
    if not isinstance(patch, Mapping):
        raise InvalidInputError(f"a patch must be a mapping of run fields, not {patch!r}")
    if not patch:
        raise InvalidInputError("a patch must change at least one field")
    for key in patch:
        name = _ALIASES.get(key, key) if isinstance(key, str) else key
        if name in IMMUTABLE_RUN_FIELDS:
            raise InvalidInputError(f"run field {key!r} cannot be patched")
    try:
        validated = RunPatch.model_validate(dict(patch))
        ensure_storable(validated.model_dump(include=validated.model_fields_set), "the patch")
        document = validated.model_dump(
            mode="json", by_alias=True, include=validated.model_fields_set
        )
    except (PydanticValidationError, PydanticSerializationError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"invalid patch: {exc}") from exc
    return ValidPatch(document)
