"""Validating a run patch: which fields may change and what values they accept.

A patch is validated field by field against ``PipelineRun``'s own field definitions, without the
current run, so every backend accepts and refuses exactly the same patches and the Redis backend
never needs to read before it writes. ``trusted_patch`` is the Celery lifecycle's shortcut for
patches it built from models validated already (see there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any, cast

from pydantic import BaseModel, TypeAdapter, create_model
from pydantic import ValidationError as PydanticValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticSerializationError, to_json

from mpstate.errors import InvalidInputError
from mpstate.fields import CamelModel, ensure_storable, iso_z, to_utc_ms
from mpstate.models import PipelineRun, PipelineRunStatus, StepState, SuspendReason

__all__ = ["IMMUTABLE_RUN_FIELDS", "RunPatch", "ValidPatch", "trusted_patch", "validate_patch"]

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
#: Dumps a run's steps in one call (each transition writes them all).
_STEP_LIST = TypeAdapter(list[StepState])

#: The fields ``trusted_patch`` takes as built, by their camelCase name, and the exact types it
#: takes for each: those the lifecycle fills from validated models or computes itself.
#: ``budget`` and ``reruns`` are not among them (user keys, ids of a length checked only by
#: validation): patches setting them are validated.
_TRUSTED_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (PipelineRunStatus,),
    "currentStepIndex": (int,),
    "steps": (list,),  # of StepState models, each checked
    "error": (str, type(None)),
    "resumeToken": (str, type(None)),
    "resumable": (bool,),
    "suspendReason": (SuspendReason, type(None)),
    "startedAt": (datetime, type(None)),
    "completedAt": (datetime, type(None)),
    "costUsd": (float, int),
    "externalJobIds": (dict,),
}


#: What ``validate_patch`` and ``trusted_patch`` hand ``ValidPatch`` (nobody else has it).
_MINTED = object()


class ValidPatch:
    """A validated patch: its JSON document (what backends store) and, on demand, its values.

    Made only by ``validate_patch`` (any input) and ``trusted_patch`` (the lifecycle's own
    patches): ``PipelineStateStore.commit`` takes one as it is, so building one elsewhere is
    refused (``TypeError``) rather than letting unvalidated data through. A store that keeps JSON
    text takes ``encoded``; one that keeps values takes ``values``; each form is built once, from
    the one the patch was made with.
    """

    __slots__ = ("_document", "_encoded", "_values")

    def __init__(
        self,
        document: dict[str, Any],
        minted: object = None,
        values: dict[str, Any] | None = None,
        encoded: dict[str, bytes] | None = None,
    ) -> None:
        if minted is not _MINTED:
            raise TypeError("a ValidPatch is made by validate_patch, not directly")
        self._document = document
        self._values = values
        self._encoded = encoded

    @property
    def document(self) -> dict[str, Any]:
        """``{camelCase field: JSON value}`` of the fields the patch sets."""
        encoded = self._encoded
        if encoded is not None and len(self._document) < len(encoded):
            # trusted_patch encodes the steps straight from their models: decoded on demand.
            for key, text in encoded.items():
                if key not in self._document:
                    self._document[key] = json.loads(text)
        return self._document

    @property
    def encoded(self) -> dict[str, bytes]:
        """``{camelCase field: its value as compact UTF-8 JSON}``, as a hash of JSON keeps it."""
        if self._encoded is None:
            self._encoded = {key: to_json(value) for key, value in self._document.items()}
        return self._encoded

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
    return ValidPatch(document, _MINTED)


def trusted_patch(patch: Mapping[str, Any]) -> ValidPatch:
    """The ``ValidPatch`` of a patch built from validated models, without validating it again.

    ``mpstate.celery.transitions`` builds each patch from models validated when they were made
    (steps as ``StepState`` models, timestamps from ``utc_now``, statuses as enums), so
    pydantic's round trip in ``validate_patch`` would rebuild the same document, at several times
    the cost, on every step. This path checks each field is one it trusts with a value of the
    exact type the lifecycle writes, puts timestamps and enums in their JSON form, dumps the steps
    in one call, takes the job map (validated ids) as built, keeps the values themselves (so a
    store can build the run it writes without reading it back), and still sends what no backend
    can store (non-finite numbers, lone surrogates) to validation, which refuses it. Anything
    else goes through ``validate_patch`` too, which accepts or refuses it exactly as for any
    caller.
    ``tests/test_trusted_patches.py`` checks that both give the same document and the same JSON
    text for every kind of transition. Not for user input: ``commit`` validates every mapping.
    Each field is encoded to JSON once, the steps straight from their models, and the document's
    step list is decoded from that text only if a backend asks for it.
    """
    document: dict[str, Any] = {}
    values: dict[str, Any] = {}
    encoded: dict[str, bytes] = {}
    try:
        for key, value in patch.items():
            types = _TRUSTED_FIELDS.get(key)
            if types is None or type(value) not in types:
                return validate_patch(patch)
            if type(value) in (int, float) and value < 0:
                return validate_patch(patch)  # both numeric fields are >= 0
            if key == "steps":
                if (
                    any(type(step) is not StepState for step in value)
                    or len({step.step_id for step in value}) != len(value)
                    or not _finite([(step.inputs, step.outputs) for step in value])
                ):
                    return validate_patch(patch)  # which refuses what a run cannot hold
                # A model's float fields cannot hold NaN (allow_inf_nan=False) and _finite
                # checked inputs and outputs; like the dump before it, this one writes a NaN
                # inside another free-form field (an approval's details) as null. A lone
                # surrogate raises here.
                encoded[key] = _STEP_LIST.dump_json(value, by_alias=True)
                values["steps"] = list(value)
                continue
            form = document[key] = _json_form(value)
            # A lone surrogate raises; NaN and infinities come out as bare tokens, never valid
            # JSON (a string that merely holds one of those words only costs the validation).
            text = encoded[key] = to_json(form)
            if b"NaN" in text or b"Infinity" in text:
                return validate_patch(patch)
            values[_ALIASES[key]] = _value_form(key, value)
    except PydanticSerializationError:
        return validate_patch(patch)
    if not encoded:
        return validate_patch(patch)
    return ValidPatch(document, _MINTED, values, encoded)


def _finite(values: Any) -> bool:
    """Whether ``values`` (any JSON) holds no NaN or infinity. The JSON-mode dump of a model
    writes those as null, so they are looked for before it, where a step holds arbitrary JSON."""
    try:
        encoded = to_json(values, inf_nan_mode="constants")
    except PydanticSerializationError:  # a lone surrogate: validation refuses it
        return False
    return b"NaN" not in encoded and b"Infinity" not in encoded


def _value_form(key: str, value: Any) -> Any:
    """A trusted field's value as a run read back holds it (timestamps at millisecond precision
    in UTC, a cost as a float)."""
    if isinstance(value, datetime):
        return to_utc_ms(value)
    if key == "costUsd":
        return float(value)
    return value


def _json_form(value: Any) -> Any:
    """A trusted field's value as its document holds it (timestamps as ``UtcDatetime`` writes
    them, enums as their values)."""
    if isinstance(value, datetime):
        return iso_z(to_utc_ms(value))
    if isinstance(value, Enum):
        return value.value
    return value
